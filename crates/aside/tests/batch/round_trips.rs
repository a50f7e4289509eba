//! Round trips counted by Redis (`CONFIG RESETSTAT`, then `INFO
//! commandstats`), and one batch shared by two OS processes.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

/// Runs a batch with one miss and a `set_many`, so that the scripts are
/// loaded before counting (a first `EVALSHA` fails with `NOSCRIPT`).
async fn warm(cache: &Cache) {
    let _: Vec<Option<String>> = cache
        .get_many_or_load(["warm"], loader(&Calls::default(), Duration::ZERO))
        .await
        .unwrap();
    cache.set_many([("warm2", "x".to_owned())]).await.unwrap();
}

fn calls(stats: &HashMap<String, u64>, cmd: &str) -> u64 {
    stats.get(cmd).copied().unwrap_or(0)
}

/// 100 keys, 40 cached: one `MGET` for the read, one script for the
/// tokens and leases of the 60 misses, one for their fills.
///
/// Redis counts the commands a script runs (`GET`, `SET`, `DEL`) as calls
/// too, so only commands the scripts never issue are compared while scripts
/// run; the all-hits call runs none, and there `GET` must be 0 as well.
async fn count_round_trips(cache: &Cache, redis: &RedisServer, l1: bool) {
    let mut conn = raw(redis).await;
    warm(cache).await;
    reset_stats(&mut conn).await;
    let cached: Vec<(String, String)> = keys(0..40).into_iter().map(|k| (k.clone(), k)).collect();
    cache.set_many(cached).await.unwrap();
    let s = commandstats(&mut conn).await;
    assert_eq!(calls(&s, "evalsha"), 1, "set_many: one script {s:?}");
    assert_eq!(calls(&s, "eval") + calls(&s, "mget"), 0, "{s:?}");

    reset_stats(&mut conn).await;
    let calls_made = Calls::default();
    let got: Vec<Option<String>> = cache
        .get_many_or_load(keys(0..100), loader(&calls_made, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got.iter().flatten().count(), 100);
    assert_eq!(calls_made.all(), vec![keys(40..100)]);
    let s = commandstats(&mut conn).await;
    assert_eq!(calls(&s, "mget"), 1, "one read of all 100 keys {s:?}");
    assert_eq!(
        calls(&s, "evalsha"),
        2,
        "tokens of the misses, then their fills {s:?}"
    );
    assert_eq!(calls(&s, "eval"), 0, "{s:?}");

    reset_stats(&mut conn).await;
    let _: Vec<Option<String>> = cache
        .get_many_or_load(keys(0..100), loader(&calls_made, Duration::ZERO))
        .await
        .unwrap();
    let s = commandstats(&mut conn).await;
    // All hits: one read, or none when L1 holds the copies.
    assert_eq!(calls(&s, "mget"), u64::from(!l1), "{s:?}");
    assert_eq!(
        calls(&s, "evalsha") + calls(&s, "get") + calls(&s, "eval"),
        0,
        "{s:?}"
    );
    assert_eq!(calls_made.all().len(), 1);

    reset_stats(&mut conn).await;
    assert!(
        cache
            .invalidate_many(keys(0..100))
            .await
            .unwrap()
            .is_applied()
    );
    let s = commandstats(&mut conn).await;
    assert_eq!(calls(&s, "del"), 1, "invalidate_many: one DEL {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trips() {
    let redis = server();
    count_round_trips(&on_redis(&redis), &redis, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_round_trips() {
    let redis = server();
    count_round_trips(&tiered(&redis), &redis, true).await;
}

/// With tags and namespace invalidation, the tokens still come with the
/// entries: one `MGET` for the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_batches_read_their_tokens_in_the_same_round_trip() {
    let redis = server();
    let backend = RedisBackend::new(&redis.url()).unwrap();
    let cache = builder()
        .namespace_invalidation(true)
        .backend(backend)
        .build()
        .unwrap();
    let opts = EntryOptions::new().tag("t1").tag("t2");
    let calls_made = Calls::default();
    let l = || loader(&calls_made, Duration::ZERO);
    let _: Vec<Option<String>> = cache
        .get_many_or_load_with(keys(0..20), &opts, l())
        .await
        .unwrap();
    let mut conn = raw(&redis).await;
    reset_stats(&mut conn).await;
    let got: Vec<Option<String>> = cache
        .get_many_or_load_with(keys(0..20), &opts, l())
        .await
        .unwrap();
    assert_eq!(got.iter().flatten().count(), 20);
    let s = commandstats(&mut conn).await;
    assert_eq!(calls(&s, "mget"), 1, "{s:?}");
    assert_eq!(calls(&s, "evalsha") + calls(&s, "get"), 0, "{s:?}");
    assert!(cache.invalidate_namespace().await.unwrap().is_applied());
    let _: Vec<Option<String>> = cache
        .get_many_or_load_with(keys(0..20), &opts, l())
        .await
        .unwrap();
    assert_eq!(
        calls_made.all().len(),
        2,
        "reloaded after the namespace invalidation"
    );
}

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
    let redis = server();
    let exe = std::env::current_exe().unwrap();
    let start_at = now_ms() + 1500;
    let children: Vec<_> = [(0, 50), (25, 75)]
        .into_iter()
        .map(|(from, to)| {
            tokio::process::Command::new(&exe)
                .args(["round_trips::batch_child", "--exact", "--nocapture"])
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
        let cache = builder()
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

/// A batch over `batch_chunk_size` keys sends one request per chunk, and
/// still calls the loader once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_chunked() {
    let redis = server();
    let backend = RedisBackend::new(&redis.url()).unwrap();
    let cache = builder()
        .batch_chunk_size(10)
        .backend(backend)
        .build()
        .unwrap();
    let mut conn = raw(&redis).await;
    warm(&cache).await;
    reset_stats(&mut conn).await;
    let calls_made = Calls::default();
    let got: Vec<Option<String>> = cache
        .get_many_or_load(keys(0..25), loader(&calls_made, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got.iter().flatten().count(), 25);
    assert_eq!(calls_made.all(), vec![keys(0..25)], "one loader call");
    let s = commandstats(&mut conn).await;
    assert_eq!(calls(&s, "mget"), 3, "{s:?}");
    assert_eq!(
        calls(&s, "evalsha"),
        6,
        "three chunks of tokens, three of fills {s:?}"
    );
}

/// Stale-while-revalidate: stale entries are served at once and refreshed
/// by the batch's load in the background, the caller waits for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_are_served_and_refreshed() {
    let cache = builder()
        .ttl(Duration::from_millis(100))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let calls_made = Calls::default();
    let _: Vec<Option<String>> = cache
        .get_many_or_load(["a", "b"], loader(&calls_made, Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (tx, rx) = oneshot::channel::<Vec<String>>();
    let started = tokio::time::Instant::now();
    let served: Vec<Option<String>> = cache
        .get_many_or_load(["a", "b"], move |keys| async move {
            let _ = tx.send(keys.clone());
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, DbDown>(keys.into_iter().map(|k| (k, "fresh".to_owned())).collect())
        })
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "did not wait for the refresh"
    );
    assert_eq!(served, [Some("v:a".to_owned()), Some("v:b".to_owned())]);
    assert_eq!(rx.await.unwrap(), ["a", "b"], "refreshed in one call");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        cache.get::<String>("a").await.unwrap().as_deref(),
        Some("fresh")
    );
    assert_eq!(cache.stats().stale_served, 2);
}

/// A queued invalidation (the backend was down when it was made) makes the
/// batch load those keys without reading or filling the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_invalidations_bypass_the_cache() {
    let mut redis = server();
    let cache = on_redis(&redis);
    cache.set("q", "old".to_owned()).await.unwrap();
    redis.stop();
    assert_eq!(
        cache.invalidate("q").await.unwrap(),
        aside::Invalidation::Queued
    );
    redis.restart().unwrap();
    let calls_made = Calls::default();
    let got: Vec<Option<String>> = cache
        .get_many_or_load(["q", "r"], loader(&calls_made, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got, [Some("v:q".to_owned()), Some("v:r".to_owned())]);
    assert_eq!(calls_made.all(), vec![vec!["q".to_owned(), "r".to_owned()]]);
    assert!(cache.stats().bypassed >= 1);
}

/// A key whose lease another process holds (and never fills) is waited for
/// up to `lease_wait`, then `on_lease_timeout` decides, for that key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_leased_elsewhere_follow_the_lease_timeout_policy() {
    let redis = server();
    let mut conn = raw(&redis).await;
    for (round, policy) in [aside::LeaseTimeout::Load, aside::LeaseTimeout::Fail]
        .into_iter()
        .enumerate()
    {
        let cache = builder()
            .lease_wait(Duration::from_millis(300))
            .on_lease_timeout(policy)
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap();
        let (held, free) = (format!("held{round}"), format!("free{round}"));
        redis::cmd("SET")
            .arg(format!("{{b:{held}}}:l"))
            .arg("another process")
            .arg("PX")
            .arg(10_000)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let calls_made = Calls::default();
        let started = tokio::time::Instant::now();
        let each = cache
            .get_many_or_load_each(
                [&held, &free],
                &EntryOptions::new(),
                loader(&calls_made, Duration::ZERO),
            )
            .await;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{policy:?}: waited"
        );
        assert_eq!(
            each[1].as_ref().unwrap().as_deref(),
            Some(format!("v:{free}").as_str())
        );
        match policy {
            aside::LeaseTimeout::Fail => {
                assert_eq!(
                    each[0].as_ref().unwrap_err().kind(),
                    ErrorKind::LoaderTimeout
                );
                assert_eq!(calls_made.all(), vec![vec![free.clone()]]);
            }
            _ => {
                assert_eq!(
                    each[0].as_ref().unwrap().as_deref(),
                    Some(format!("v:{held}").as_str())
                );
                assert_eq!(calls_made.all(), vec![vec![held.clone(), free.clone()]]);
            }
        }
        assert!(cache.stats().lease_timeouts >= 1);
    }
}
