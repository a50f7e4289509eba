//! Runs the built `aside` binary end to end: `aside demo` on the embedded
//! default (memory cache, SQLite), with a memory cache smaller than the
//! table, and against a Redis of its own.

use std::process::{Command, Output};

const SMALL: [&str; 7] = [
    "--rows",
    "2000",
    "--duration",
    "2",
    "--concurrency",
    "4",
    "--quiet",
];

/// `aside demo` with the `SMALL` options and `extra`.
fn demo(extra: &[&str]) -> Output {
    run_demo(&[&SMALL[..], extra].concat())
}

/// `aside demo` with exactly `args` (clap refuses an option given twice).
fn run_demo(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_aside"))
        .arg("demo")
        .args(args)
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!("could not run the aside binary: {e}"),
    }
}

/// Checks the exit status and the report; returns stdout.
fn check_report(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "aside demo failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.to_lowercase().contains("hit ratio"),
        "no hit ratio in:\n{stdout}"
    );
    // The figures of the caches depend on timing (a read between a write's
    // commit and its invalidation is stale with any cache, and naive
    // cache-aside's race may or may not be lost in so short a run): they
    // only have to be there.
    let stale = counts(&stdout, "stale reads: ");
    for run in ["aside", "naive cache-aside"] {
        assert!(stale.iter().any(|(r, _)| r == run), "{run}:\n{stdout}");
    }
    // Reads straight from SQLite (WAL) always see every commit that preceded
    // them: a stale read there would be a bug in the detector itself.
    assert_eq!(
        count_of(&stale, "no cache"),
        0,
        "stale reads without a cache:\n{stdout}"
    );
    // What aside guarantees: a read that begins after an invalidation has
    // finished never returns what the invalidated row held.
    let after = counts(&stdout, "stale after invalidation: ");
    assert!(
        after.iter().any(|(r, _)| r == "naive cache-aside"),
        "{stdout}"
    );
    assert_eq!(
        count_of(&after, "aside"),
        0,
        "aside served a value past its invalidation:\n{stdout}"
    );
    stdout
}

/// Parses "<prefix><n> with <run>, <n> with <run>, ..." into (run, n).
fn counts(stdout: &str, prefix: &str) -> Vec<(String, u64)> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
    line.split(", ")
        .map(|part| {
            let (n, run) = part
                .split_once(" with ")
                .unwrap_or_else(|| panic!("{part:?} in {line:?}"));
            let n = n
                .parse()
                .unwrap_or_else(|e| panic!("{n:?} in {line:?}: {e}"));
            (run.to_owned(), n)
        })
        .collect()
}

fn count_of(counts: &[(String, u64)], run: &str) -> u64 {
    counts
        .iter()
        .find_map(|(r, n)| (r == run).then_some(*n))
        .unwrap_or_else(|| panic!("no count for {run:?} in {counts:?}"))
}

#[test]
fn demo_runs_on_the_embedded_default() {
    let out = check_report(&demo(&[]));
    assert!(out.contains("memory backend"), "{out}");
}

/// A memory cache with room for a quarter of the table evicts all run long,
/// and evicting must not reset what aside checks its fills against. Before
/// the fix the memory backend kept each key's generation in its bounded
/// entries: an evicted tombstone restarted it, so a fill that raced a write
/// could match again and cache the old row. This workload (few rows shared by
/// many tasks, half writes, a flat Zipf, a 3 ms load window) made aside serve
/// 1 to 14 reads past their invalidation in each of 16 one-second runs on
/// that backend; on the fixed one 0 in 20, naive cache-aside 150 to 300.
#[test]
fn demo_with_a_cache_smaller_than_the_data() {
    let out = check_report(&run_demo(&[
        "--rows",
        "100",
        "--small-cache",
        "--duration",
        "1",
        "--concurrency",
        "16",
        "--write-share",
        "0.5",
        "--zipf",
        "0.5",
        "--load-delay-ms",
        "3",
        "--quiet",
    ]));
    assert!(
        out.contains("room for 25 of the 100 products, so it evicts"),
        "{out}"
    );
    // Otherwise the run raced nothing and aside's 0 would prove nothing.
    let after = counts(&out, "stale after invalidation: ");
    assert!(
        count_of(&after, "naive cache-aside") > 0,
        "naive cache-aside served nothing past an invalidation:\n{out}"
    );
}

#[test]
fn demo_runs_against_redis() {
    let redis = match aside_test::RedisServer::start() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let out = check_report(&demo(&["--redis", &redis.url()]));
    assert!(out.contains("Redis at"), "{out}");
}

#[test]
fn bad_options_fail_with_a_readable_message() {
    let output = demo(&["--write-share", "1.5"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--write-share must be between 0 and 1"),
        "{stderr}"
    );
}

/// `--json`: one JSON document on stdout (no report lines, no bars), with
/// the setup, the three runs and aside's counters.
#[test]
fn demo_json_is_one_document() {
    let output = run_demo(&[
        "--rows",
        "500",
        "--duration",
        "0.5",
        "--concurrency",
        "4",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "stderr: {stderr}");
    let doc: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => panic!("not one JSON document ({e}):\n{stdout}"),
    };
    assert_eq!(doc["setup"]["rows"], 500);
    assert_eq!(doc["setup"]["concurrency"], 4);
    let runs = &doc["runs"];
    for run in ["aside", "naive", "no_cache"] {
        let reads = runs[run]["reads"].as_u64().unwrap_or(0);
        let ops = runs[run]["operations"].as_u64().unwrap_or(0);
        assert!(reads > 0 && ops >= reads, "{run}: {doc}");
        assert!(
            runs[run]["read_us"]["p50"].as_u64().is_some(),
            "{run}: {doc}"
        );
    }
    assert_eq!(runs["aside"]["stale_after_invalidation"], 0, "{doc}");
    assert_eq!(runs["no_cache"]["stale_reads"], 0, "{doc}");
    assert!(runs["no_cache"]["stale_after_invalidation"].is_null());
    assert!(runs["no_cache"]["hit_ratio"].is_null());
    assert_eq!(
        runs["no_cache"]["database_queries"],
        runs["no_cache"]["reads"]
    );
    let hit_ratio = doc["aside_stats"]["hit_ratio"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&hit_ratio), "{doc}");
    assert_eq!(runs["aside"]["hit_ratio"].as_f64(), Some(hit_ratio));
}
