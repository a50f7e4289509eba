//! The peer comparison, one command, every ratio from one run:
//!
//! ```sh
//! cargo run --release -p aside-benches --bin compare [-- --json] [--plots DIR] [--rounds N] [--pin] [--only hit,batch,miss,stampede,stampede4,python,memory,outage,zipf,curves]
//! ```
//!
//! Starts its own `redis-server`, then runs each scenario (see
//! `aside_benches::compare`) with aside and its peers interleaved in rounds,
//! prints a table per scenario, and with `--json` a JSON summary at the end.
//! `stampede` is the stampede in one process, `stampede4` the one over four
//! child processes (this binary again, with `--stampede-child`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::Instant;

use aside_benches::compare::{self, Opts};
use serde_json::{Map, Value, json};

const SCENARIOS: [&str; 10] = [
    "hit",
    "batch",
    "miss",
    "stampede",
    "stampede4",
    "python",
    "memory",
    "outage",
    "zipf",
    "curves",
];

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--mem-child") {
        compare::memory::child(&args[1], args[2].parse().unwrap());
        return;
    }
    if args.first().map(String::as_str) == Some("--stampede-child") {
        compare::stampede_procs::child(&args[1], args[2].parse().unwrap());
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "compare [--json] [--plots DIR] [--rounds N] [--pin] [--only {}]\n\
             Runs each scenario with aside and its peers interleaved in rounds \
             (default: all, 20 rounds) against a redis-server of its own. \
             --pin: this process and its children on CPU 0, redis-server on CPU 1.",
            SCENARIOS.join(",")
        );
        return;
    }
    let json_out = args.iter().any(|a| a == "--json");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = value_of("--rounds").map_or(20, |r| r.parse().unwrap());
    let only: Vec<String> = value_of("--only").map_or_else(
        || SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        |o| o.split(',').map(str::to_owned).collect(),
    );
    if let Some(unknown) = only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
        eprintln!(
            "unknown scenario {unknown:?}; known: {}",
            SCENARIOS.join(",")
        );
        std::process::exit(2);
    }
    let server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let opts = Opts {
        rounds,
        url: server.url(),
    };
    // Before the runtime exists: its threads inherit the main thread's CPU.
    let pinned = args.iter().any(|a| a == "--pin");
    if pinned {
        pin(&server);
    }
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = load_average();
    println!(
        "aside peer comparison: {rounds} interleaved rounds, {cpus} CPUs, tokio multi-thread \
         runtime with 2 workers, redis-server on loopback; load average at start {load_before}"
    );
    // Two workers: the machine kind these figures are for has two CPUs.
    let rt = aside_benches::runtime().unwrap();
    let began = Instant::now();
    let mut summary = Map::new();
    summary.insert("rounds".into(), json!(rounds));
    summary.insert("cpus".into(), json!(cpus));
    summary.insert("pinned".into(), json!(pinned));
    summary.insert("load_average_start".into(), json!(load_before));
    for s in SCENARIOS.iter().filter(|s| only.iter().any(|o| o == *s)) {
        let t = Instant::now();
        let v: Value = rt.block_on(async {
            match *s {
                "hit" => compare::hit::run(&opts).await,
                "batch" => compare::batch::run(&opts).await,
                "miss" => compare::miss::run(&opts).await,
                "stampede" => compare::stampede::run(&opts).await,
                "stampede4" => compare::stampede_procs::run(&opts).await,
                "python" => compare::python::run(&opts).await,
                "outage" => compare::outage::run(&opts).await,
                "zipf" => compare::zipf::run(&opts).await,
                "curves" => compare::curves::run(&opts).await,
                _ => compare::memory::run(&opts).await,
            }
        });
        println!(
            "({s}: {:.1} s, load average now {})",
            t.elapsed().as_secs_f64(),
            load_average()
        );
        summary.insert((*s).to_owned(), v);
    }
    summary.insert("load_average_end".into(), json!(load_average()));
    summary.insert("seconds".into(), json!(began.elapsed().as_secs_f64()));
    drop(server);
    if let Some(dir) = value_of("--plots") {
        let summary = Value::Object(summary.clone());
        match compare::plots::draw(&summary, std::path::Path::new(&dir)) {
            Ok(files) => {
                for f in files {
                    println!("plot: {}", f.display());
                }
            }
            Err(e) => println!("plots not drawn: {e}"),
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(summary)).unwrap()
        );
    }
}

/// `--pin`: redis-server on CPU 1, this process (every thread, and so the
/// children it starts later) on CPU 0, with `taskset`, so that the client
/// and the server never take each other's CPU or migrate.
fn pin(server: &aside_test::RedisServer) {
    let redis = server.pid().expect("redis-server's pid");
    for (cpu, pid) in [("1", redis), ("0", std::process::id())] {
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-cp", cpu, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "taskset -a -cp {cpu} {pid} failed (util-linux installed?)"
        );
    }
}
