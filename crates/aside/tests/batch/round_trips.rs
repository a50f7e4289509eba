//! Round trips counted by Redis itself (`CONFIG RESETSTAT`, then `INFO
//! commandstats`): a batch reads with one `MGET`, takes tokens and leases
//! with one script and fills with one more, tags and namespace tokens come
//! with the entries, and a batch over `batch_chunk_size` keys sends one
//! request per chunk.

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

/// 100 keys, 40 cached: one `MGET` for the read, one pipeline of plain
/// commands for the tokens and leases of the 60 misses (no script), one
/// script for their fills.
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
    assert_eq!(calls(&s, "evalsha"), 1, "the fills' script {s:?}");
    // The misses' lease request: the marker of each and its lease,
    // `SET NX` each (the fill script's own `SET`s come on top).
    assert!(calls(&s, "set") >= 2 * 60, "{s:?}");
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
    let redis = redis_server();
    count_round_trips(&on_redis(&redis), &redis, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_round_trips() {
    let redis = redis_server();
    count_round_trips(&tiered(&redis), &redis, true).await;
}

/// With tags and namespace invalidation, the tokens still come with the
/// entries: one `MGET` for the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_batches_read_their_tokens_in_the_same_round_trip() {
    let redis = redis_server();
    let backend = RedisBackend::new(&redis.url()).unwrap();
    let cache = builder("b")
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

/// A batch over `batch_chunk_size` keys sends one request per chunk, and
/// still calls the loader once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_chunked() {
    let redis = redis_server();
    let backend = RedisBackend::new(&redis.url()).unwrap();
    let cache = builder("b")
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
    assert_eq!(calls(&s, "evalsha"), 3, "three chunks of fills {s:?}");
}
