//! One batch shared by two OS processes: this test binary runs itself
//! again (its `across_processes::batch_child` test), and each key is loaded
//! once across both.

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use aside_test::fixtures::test_name;

use super::*;

/// Set in a child process: the Redis URL, the wall-clock ms to start at,
/// and the keys' range.
const CHILD_ENV: &str = "ASIDE_BATCH_CHILD";

fn now_ms() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(d.as_millis()).unwrap()
}

/// Two processes load overlapping batches (keys 0..50 and 25..75) at the
/// same instant; the loader counts its loads in Redis. Each key is loaded
/// once: the other process waits for the lease holder's fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_load_each_key_once() {
    let redis = redis_server();
    let exe = std::env::current_exe().unwrap();
    let start_at = now_ms() + 1500;
    let children: Vec<_> = [(0, 50), (25, 75)]
        .into_iter()
        .map(|(from, to)| {
            tokio::process::Command::new(&exe)
                .args([
                    test_name(module_path!(), "batch_child").as_str(),
                    "--exact",
                    "--nocapture",
                ])
                .env(CHILD_ENV, format!("{} {start_at} {from} {to}", redis.url()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut conn = raw(&redis).await;
    let loads: Vec<Option<u64>> = redis::cmd("MGET")
        .arg((0..75).map(|i| format!("loads:k{i}")).collect::<Vec<_>>())
        .query_async(&mut conn)
        .await
        .unwrap();
    let twice: Vec<usize> = (0..75).filter(|&i| loads[i] != Some(1)).collect();
    assert!(
        twice.is_empty(),
        "keys not loaded exactly once: {twice:?} ({loads:?})"
    );
}

/// A child's body; returns at once unless [`CHILD_ENV`] is set.
#[test]
fn batch_child() {
    let Ok(config) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = config.split(' ').collect();
    let (url, start_at) = (parts[0].to_owned(), parts[1].parse::<u64>().unwrap());
    let (from, to) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cache = builder("b")
            .backend(RedisBackend::new(&url).unwrap())
            .build()
            .unwrap();
        let counter = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(start_at.saturating_sub(now_ms()))).await;
        let got: Vec<Option<String>> = cache
            .get_many_or_load(keys(from..to), move |keys| async move {
                let mut conn = counter;
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.incr(format!("loads:{k}"), 1).ignore();
                }
                pipe.query_async::<()>(&mut conn).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, DbDown>(
                    keys.into_iter()
                        .map(|k| (k.clone(), format!("v:{k}")))
                        .collect(),
                )
            })
            .await
            .unwrap();
        let want: Vec<Option<String>> = keys(from..to)
            .into_iter()
            .map(|k| Some(format!("v:{k}")))
            .collect();
        assert_eq!(got, want);
    });
}
