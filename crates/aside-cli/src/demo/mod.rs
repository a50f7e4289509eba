//! `aside demo`: what cache-aside with aside buys, measured on this machine.

pub(crate) mod db;
mod naive;
mod report;
mod workload;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use aside::Cache;
use aside::backend::MemoryBackend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use db::Db;
use naive::Naive;
use workload::{Plan, Reads, Versions};

use crate::connect::{checked_redis, redact};
use crate::exporter::{Exporter, MetricsArgs, export};
use crate::output::{print_json, show_progress};

/// The largest table the demo seeds (and keeps versions for in memory).
const MAX_ROWS: u64 = 10_000_000;

/// `--small-cache` holds this fraction of the rows (1/4): enough for the hot
/// ids of the default Zipf workload, too few for the table, so the cold tail
/// is evicted and loaded again all run long.
const SMALL_CACHE_DIVISOR: u64 = 4;

/// Options of `aside demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Products seeded into the SQLite table.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    rows: u64,
    /// Seconds each of the three runs (aside, naive cache-aside, no cache)
    /// lasts.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Concurrent tasks issuing reads and writes.
    #[arg(long, value_name = "N", default_value_t = 16)]
    concurrency: usize,
    /// Share of operations that are writes (UPDATE, then invalidate), in 0..=1.
    #[arg(long, value_name = "F", default_value_t = 0.02)]
    write_share: f64,
    /// Exponent of the Zipf distribution of product ids (higher: more skewed).
    #[arg(long, value_name = "S", default_value_t = 1.1)]
    zipf: f64,
    /// Seed of the random streams (the same for both runs).
    #[arg(long, value_name = "N", default_value_t = 42)]
    seed: u64,
    /// Seconds a cached product is kept.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    ttl: u64,
    /// Milliseconds every database read waits after its SELECT before
    /// returning the row, in all three runs: what a read costs beyond
    /// embedded SQLite's microseconds (a network round trip, serialization).
    /// In a cache load it is also the window in which a write can commit and
    /// invalidate while the load holds the old row.
    #[arg(long, value_name = "MS", default_value_t = 1)]
    load_delay_ms: u64,
    /// Entries the in-process cache holds, for aside and for naive
    /// cache-aside alike (default: as many as --rows, so nothing is evicted).
    /// Fewer than --rows makes the runs evict as they go.
    #[arg(long, value_name = "N", conflicts_with_all = ["redis", "small_cache"])]
    cache_entries: Option<u64>,
    /// Shorthand for --cache-entries of a quarter of --rows: a cache smaller
    /// than the data, which keeps evicting.
    #[arg(long, conflicts_with = "redis")]
    small_cache: bool,
    /// Cache in this Redis (e.g. redis://127.0.0.1:6379) instead of in process.
    /// Its capacity is the server's (maxmemory), not the demo's.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The Redis URL names a node of a Redis Cluster (any node: the others
    /// are found from it).
    #[arg(long, requires = "redis")]
    cluster: bool,
    /// Key namespace (default: unique per run, so runs never share entries).
    #[arg(long)]
    namespace: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// One JSON document on stdout (setup, the three runs, aside's
    /// counters) instead of the report; no progress bars.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    metrics: MetricsArgs,
}

impl DemoArgs {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=MAX_ROWS).contains(&self.rows),
            "--rows must be between 1 and {MAX_ROWS}, got {}",
            self.rows
        );
        ensure!(
            self.duration.is_finite() && self.duration > 0.0 && self.duration <= 3600.0,
            "--duration must be more than 0 and at most 3600 seconds, got {}",
            self.duration
        );
        ensure!(
            (1..=4096).contains(&self.concurrency),
            "--concurrency must be between 1 and 4096, got {}",
            self.concurrency
        );
        ensure!(
            (0.0..=1.0).contains(&self.write_share),
            "--write-share must be between 0 and 1, got {}",
            self.write_share
        );
        ensure!(
            self.zipf.is_finite() && self.zipf > 0.0,
            "--zipf must be a number greater than 0, got {}",
            self.zipf
        );
        ensure!(
            self.cache_entries != Some(0),
            "--cache-entries must be at least 1"
        );
        ensure!(self.ttl > 0, "--ttl must be at least 1 second");
        ensure!(
            self.load_delay_ms <= 60_000,
            "--load-delay-ms must be at most 60000, got {}",
            self.load_delay_ms
        );
        Ok(())
    }

    /// Entries the in-process cache holds (see --cache-entries and
    /// --small-cache).
    fn cache_entries(&self) -> u64 {
        match self.cache_entries {
            Some(n) => n,
            None if self.small_cache => (self.rows / SMALL_CACHE_DIVISOR).max(1),
            None => self.rows,
        }
    }

    fn plan(&self) -> Plan {
        Plan {
            rows: self.rows,
            duration: Duration::from_secs_f64(self.duration),
            concurrency: self.concurrency,
            write_share: self.write_share,
            zipf: self.zipf,
            seed: self.seed,
            load_delay: Duration::from_millis(self.load_delay_ms),
        }
    }
}

/// Runs the demo and prints its report on stdout.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    args.validate()?;
    let show = show_progress(args.quiet, args.json);
    let namespace = args.namespace.clone().unwrap_or_else(unique_namespace);
    let exporter = args.metrics.start().await?;
    let (cache, naive) = build_caches(&args, &namespace, exporter.as_ref()).await?;
    let plan = args.plan();
    let store = match &args.redis {
        Some(url) => format!("Redis at {}", redact(url)),
        None => format!(
            "in process (memory backend, {})",
            capacity(args.cache_entries(), args.rows)
        ),
    };

    if !args.json {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "aside demo: {} products in SQLite; cache: {store}, namespace {namespace:?}, ttl {}s",
            args.rows, args.ttl
        )?;
        writeln!(
            out,
            "workload: {} tasks for {}s per run, Zipf exponent {}, {}% writes, seed {}; \
             every database read waits {} ms after its SELECT",
            args.concurrency,
            args.duration,
            args.zipf,
            args.write_share * 100.0,
            args.seed,
            args.load_delay_ms
        )?;
    }

    let dir = tempfile::Builder::new()
        .prefix("aside-demo-")
        .tempdir()
        .context("could not create a temporary directory for the database")?;
    let db = Db::open(&dir.path().join("demo.db")).await?;
    let started = Instant::now();
    let bar = spinner(show, format!("seeding {} products", args.rows));
    db.seed(args.rows, args.seed).await?;
    bar.finish_and_clear();
    let seeded_in = started.elapsed();
    if !args.json {
        writeln!(
            std::io::stdout().lock(),
            "seeded {} products in {:.2}s",
            args.rows,
            seeded_in.as_secs_f64()
        )?;
    }

    let versions = Arc::new(Versions::new(args.rows));
    let bar = timed_bar(show, "aside   ", plan.duration);
    let cached = workload::run(plan, &db, Reads::Cached(cache.clone()), &versions, &bar).await?;
    let stats = cache.stats();
    let bar = timed_bar(show, "naive   ", plan.duration);
    let naive = workload::run(plan, &db, Reads::Naive(naive), &versions, &bar).await?;
    let bar = timed_bar(show, "no cache", plan.duration);
    let direct = workload::run(plan, &db, Reads::Direct, &versions, &bar).await?;
    db.close().await;

    let runs = report::Runs {
        aside: &cached,
        stats: &stats,
        naive: &naive,
        direct: &direct,
    };
    if args.json {
        return print_json(&report::json(
            &runs,
            serde_json::json!({
                "rows": args.rows,
                "cache": store,
                "namespace": namespace,
                "ttl_seconds": args.ttl,
                "duration_seconds": args.duration,
                "concurrency": args.concurrency,
                "zipf": args.zipf,
                "write_share": args.write_share,
                "seed": args.seed,
                "load_delay_ms": args.load_delay_ms,
                "seeded_seconds": seeded_in.as_secs_f64(),
            }),
        ));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    report::write(&mut out, &runs)?;
    out.flush()?;
    Ok(())
}

/// The cache under test, and naive cache-aside on the same kind of store:
/// both in process, or both in Redis (checked to answer).
async fn build_caches(
    args: &DemoArgs,
    namespace: &str,
    exporter: Option<&Exporter>,
) -> anyhow::Result<(Cache, Naive)> {
    let ttl = Duration::from_secs(args.ttl);
    let builder = export(Cache::builder().namespace(namespace).ttl(ttl), exporter);
    let Some(url) = &args.redis else {
        // By default room for the whole table: the demo measures the pattern,
        // not evictions. A smaller capacity shows that evicting entries does
        // not let stale fills through (aside keeps its write-path state
        // outside the bounded cache). Both runs get the same capacity.
        let entries = args.cache_entries();
        let backend = MemoryBackend::builder().max_entries(entries).build();
        let cache = builder
            .backend(backend)
            .build()
            .context("invalid cache options (check --namespace)")?;
        return Ok((cache, Naive::in_memory(entries, ttl)));
    };
    let backend = checked_redis(url, args.cluster, namespace).await?;
    // The naive run comes after aside's, on the same (checked) connection;
    // its keys are outside aside's `{namespace:...}` shape.
    let naive = Naive::on_redis(backend.connection(), format!("{namespace}:naive"), ttl);
    let cache = builder
        .backend(backend)
        .build()
        .context("invalid cache options (check --namespace)")?;
    Ok((cache, naive))
}

/// The in-process cache's capacity, and whether the table fits in it.
fn capacity(entries: u64, rows: u64) -> String {
    if entries >= rows {
        format!("room for {entries} entries: every product")
    } else {
        format!("room for {entries} of the {rows} products, so it evicts")
    }
}

/// `aside-demo-<pid>-<unix ms>`: runs never read each other's entries.
pub(crate) fn unique_namespace() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("aside-demo-{}-{ms}", std::process::id())
}

fn spinner(show: bool, message: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn timed_bar(show: bool, label: &'static str, duration: Duration) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    // The message is the run's operation count so far ("12345 ops").
    let template = format!(
        "{{prefix}} [{{bar:40}}] {{elapsed:>3}} of {:.0}s {{msg}}",
        duration.as_secs_f64()
    );
    let style = ProgressStyle::with_template(&template).map_or_else(
        |_| ProgressStyle::default_bar(),
        |s| s.progress_chars("=> "),
    );
    // On stderr (stdout is the report's), and left on screen when the run
    // ends, so the three runs' counts stay visible.
    ProgressBar::with_draw_target(Some(ms), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: DemoArgs,
    }

    fn parse(extra: &[&str]) -> DemoArgs {
        let argv = std::iter::once("demo").chain(extra.iter().copied());
        match Wrapper::try_parse_from(argv) {
            Ok(w) => w.args,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(parse(&[]).validate().is_ok());
    }

    #[test]
    fn nonsense_is_rejected_with_the_option_named() {
        for (argv, option) in [
            (&["--write-share", "1.5"][..], "--write-share"),
            (&["--write-share=-0.1"][..], "--write-share"),
            (&["--zipf", "0"][..], "--zipf"),
            (&["--rows", "0"][..], "--rows"),
            (&["--duration", "0"][..], "--duration"),
            (&["--concurrency", "0"][..], "--concurrency"),
            (&["--ttl", "0"][..], "--ttl"),
            (&["--cache-entries", "0"][..], "--cache-entries"),
            (&["--load-delay-ms", "60001"][..], "--load-delay-ms"),
        ] {
            match parse(argv).validate() {
                Ok(()) => panic!("{argv:?} accepted"),
                Err(e) => assert!(e.to_string().contains(option), "{argv:?}: {e}"),
            }
        }
    }

    #[test]
    fn cache_capacity_defaults_to_the_table_and_can_be_smaller() {
        assert_eq!(parse(&["--rows", "2000"]).cache_entries(), 2000);
        assert_eq!(
            parse(&["--rows", "2000", "--small-cache"]).cache_entries(),
            500
        );
        assert_eq!(parse(&["--rows", "3", "--small-cache"]).cache_entries(), 1);
        assert_eq!(
            parse(&["--rows", "2000", "--cache-entries", "100"]).cache_entries(),
            100
        );
    }

    #[test]
    fn cache_capacity_options_conflict_with_redis_and_each_other() {
        for argv in [
            &["--small-cache", "--redis", "redis://127.0.0.1"][..],
            &["--cache-entries", "10", "--redis", "redis://127.0.0.1"][..],
            &["--cache-entries", "10", "--small-cache"][..],
        ] {
            let argv = std::iter::once("demo").chain(argv.iter().copied());
            assert!(Wrapper::try_parse_from(argv).is_err());
        }
    }
}
