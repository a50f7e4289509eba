//! Runs the built `aside` binary end to end: `aside demo` on the embedded
//! default (memory cache, SQLite), and against a Redis of its own.

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

fn demo(extra: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_aside"))
        .arg("demo")
        .args(SMALL)
        .args(extra)
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
