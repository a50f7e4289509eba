//! Runs the built `aside` binary: `aside warm` on the embedded default
//! (memory cache, SQLite) from every product, from a key file and from a
//! hot-keys list, and twice against one Redis namespace.

use std::process::{Command, Output};

fn warm(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_aside"))
        .arg("warm")
        .args(args)
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!("could not run the aside binary: {e}"),
    }
}

/// The summary's figures, checked to be there: (keys, loaded, already
/// cached, failed).
fn summary(output: &Output) -> (u64, u64, u64, u64) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "aside warm failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let figure = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}"))
    };
    assert!(stdout.contains("time: "), "{stdout}");
    (
        figure("keys: "),
        figure("loaded: "),
        figure("already cached: "),
        figure("failed: "),
    )
}

fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let path = dir.path().join(name);
    if let Err(e) = std::fs::write(&path, text) {
        panic!("{e}");
    }
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

#[test]
fn every_product_is_loaded() {
    let out = warm(&["--all", "--rows", "2000", "--chunk-size", "300", "--quiet"]);
    assert_eq!(summary(&out), (2000, 2000, 0, 0));
}

#[test]
fn a_key_file_is_deduplicated_and_foreign_keys_are_skipped() {
    let (_dir, path) = temp_file(
        "keys.txt",
        "# hot products\nproduct:1\nproduct:2\n\nproduct:1\nuser:7\nproduct:5000\n",
    );
    let out = warm(&["--keys", &path, "--rows", "100", "--quiet"]);
    // product:5000 has no row: loaded as "not found", as a read would.
    assert_eq!(summary(&out), (3, 3, 0, 0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped 1 keys"), "{stdout}");
}

#[test]
fn a_hot_keys_list_is_read_and_a_broken_one_refused() {
    let hot = aside::HotKeys::new(vec![("product:3".into(), 9), ("product:4".into(), 2)]);
    let (_dir, path) = temp_file("hot.json", &hot.to_json());
    let out = warm(&["--hot-keys", &path, "--rows", "100", "--quiet"]);
    assert_eq!(summary(&out), (2, 2, 0, 0));

    let (_dir, broken) = temp_file("broken.json", "[\"product:3\"]");
    let out = warm(&["--hot-keys", &broken, "--rows", "100", "--quiet"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hot-keys"), "{stderr}");
}

#[test]
fn a_key_source_is_required() {
    let out = warm(&["--rows", "10"]);
    assert!(!out.status.success());
}

#[test]
fn a_second_run_on_redis_finds_the_keys_cached() {
    let redis = match aside_test::RedisServer::start() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let url = redis.url();
    let args = [
        "--all",
        "--rows",
        "1500",
        "--redis",
        &url,
        "--namespace",
        "warmtest",
        "--quiet",
    ];
    assert_eq!(summary(&warm(&args)), (1500, 1500, 0, 0));
    assert_eq!(summary(&warm(&args)), (1500, 0, 1500, 0));
}

/// `--json`: one JSON document with the summary's figures.
#[test]
fn warm_json_is_one_document() {
    let (_dir, path) = temp_file("keys.txt", "product:1\nproduct:2\nuser:7\n");
    let out = warm(&["--keys", &path, "--rows", "100", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let doc: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => panic!("not one JSON document ({e}):\n{stdout}"),
    };
    assert_eq!(doc["keys"], 2);
    assert_eq!(doc["loaded"], 2);
    assert_eq!(doc["cached_already"], 0);
    assert_eq!(doc["failed"], 0);
    assert_eq!(doc["skipped"], 1);
    assert_eq!(doc["first_skipped"], "user:7");
    assert!(doc["seconds"].as_f64().is_some());
}
