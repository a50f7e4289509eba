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
    // aside's figure depends on timing; it only has to be there.
    let (_with_aside, no_cache) = stale_reads(&stdout);
    // Reads straight from SQLite (WAL) always see every commit that preceded
    // them: a stale read there would be a bug in the detector itself.
    assert_eq!(no_cache, 0, "stale reads without a cache:\n{stdout}");
    stdout
}

/// Parses "stale reads: <aside> with aside, <no cache> with no cache".
fn stale_reads(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stale reads: "))
        .unwrap_or_else(|| panic!("no stale reads line in:\n{stdout}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}")))
        .collect();
    match numbers[..] {
        [a, b] => (a, b),
        _ => panic!("no two stale read counts in {line:?}"),
    }
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
