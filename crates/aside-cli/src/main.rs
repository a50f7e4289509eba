//! `aside`: the command line of the aside cache-aside library.
//!
//! `aside demo` seeds a products table in a throwaway SQLite database, runs a
//! skewed read-mostly workload through an aside cache, through naive
//! cache-aside and straight against the database, and prints what the cache
//! bought and what aside's protection against stale fills changed.
//!
//! `aside warm` fills the demo's product cache from a list of keys (a file,
//! a saved hot-keys list, or every product) and prints what it loaded.
//!
//! `aside listen` runs the PostgreSQL change bridge: committed row changes
//! in the mapped tables invalidate a Redis-backed cache, until Ctrl-C.
//!
//! `aside stats`, `aside inspect` and `aside invalidate` are the admin
//! commands: hit ratio and counters (from a service's Prometheus page or
//! from Redis), one entry decoded, and invalidations by key, tag or
//! namespace.
//!
//! Every command but `listen` writes one JSON document on stdout with
//! `--json`; progress bars go to stderr, only when it is a terminal.
//!
//! `demo`, `warm` and `listen` serve their cache's metrics for Prometheus
//! at `http://ADDR/metrics` with `--metrics-addr ADDR` while they run.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod connect;
mod demo;
mod exporter;
mod inspect;
mod invalidate;
mod listen;
mod output;
mod stats;
mod warm;

/// The aside command line.
#[derive(Debug, Parser)]
#[command(name = "aside", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seed a throwaway SQLite database, run a Zipf read/write workload with
    /// aside, with naive cache-aside and without a cache, and compare hit
    /// ratio, database queries, latency, throughput and stale reads.
    Demo(demo::DemoArgs),
    /// Listen to PostgreSQL (LISTEN/NOTIFY and a trigger per table) and
    /// invalidate a Redis-backed cache when mapped rows change, until Ctrl-C.
    Listen(listen::ListenArgs),
    /// Warm the demo's product cache (in process, or in Redis) from a file of
    /// keys, a saved hot-keys list or every product, loading the misses in
    /// chunks, and print how many were loaded, already cached or failed.
    Warm(warm::WarmArgs),
    /// Hit ratio and counters: aside's, from a service's Prometheus page
    /// (--metrics-url), or the server's, from Redis (--redis).
    Stats(stats::StatsArgs),
    /// One cache entry as stored in Redis, decoded: its Redis keys, TTL,
    /// expiry, codec and size, the tag and namespace tokens it was stamped
    /// with beside the current ones, its lease, and its value.
    Inspect(inspect::InspectArgs),
    /// Invalidate keys, tags or a whole namespace of a Redis-backed cache.
    Invalidate(invalidate::InvalidateArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Listen(args) => listen::run(args).await,
        Command::Warm(args) => warm::run(args).await,
        Command::Stats(args) => stats::run(args).await,
        Command::Inspect(args) => inspect::run(args).await,
        Command::Invalidate(args) => invalidate::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Nothing more useful to do if stderr is gone.
            let _ = writeln!(std::io::stderr().lock(), "error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without the repetitions of errors
/// whose message already includes their source's.
fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if !previous.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
        previous = message;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn repeated_causes_are_said_once() {
        let root = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(root)
            .context("backend failed: connection refused")
            .context("could not reach Redis");
        assert_eq!(
            describe(&e),
            "could not reach Redis: backend failed: connection refused"
        );
    }
}
