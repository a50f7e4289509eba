//! Requests to Redis under strain: a request that takes leases times out on
//! the client but runs on the server (for a batch and for a single load),
//! values too large for one request, and a batch's leases kept until its
//! last fill. Every test runs against a real redis-server.

use super::*;

/// Holds every write (scripts included) for `ms`: a request sent meanwhile
/// times out on the client, then runs on the server when the pause ends.
async fn pause_writes(conn: &mut redis::aio::MultiplexedConnection, ms: u64) {
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async::<()>(conn)
        .await
        .unwrap();
}

async fn exists(conn: &mut redis::aio::MultiplexedConnection, keys: &[String]) -> u64 {
    redis::cmd("EXISTS")
        .arg(keys)
        .query_async(conn)
        .await
        .unwrap()
}

fn fragile(redis: &RedisServer, namespace: &str) -> Cache {
    builder(namespace)
        .backend(redis_backend(redis))
        .backend_timeout(Duration::from_millis(100))
        .backend_failure_threshold(1000)
        .lease_ttl(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The request that takes a batch's leases times out on the client but
/// runs on the server afterwards: the leases it took must not stay behind,
/// or every other process waits up to `lease_ttl` for a load nobody runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_lease_request_timed_out_leaves_no_lease_behind() {
    let redis = redis_server();
    let cache = fragile(&redis, "lt");
    // The scripts are loaded first: held by the pause, an `EVALSHA` of an
    // unknown script would only fail once it runs.
    cache.get_many_or_load(["warm"], echo).await.unwrap();
    let mut conn = raw(&redis).await;
    pause_writes(&mut conn, 400).await;
    let got = cache.get_many_or_load(["a", "b"], echo).await.unwrap();
    assert_eq!(got, [Some("a".to_owned()), Some("b".to_owned())]);
    // The pause ends and the held requests run, in the order sent.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leases: Vec<String> = ["a", "b"]
        .iter()
        .map(|k| format!("{}:l", cache.physical_key(k)))
        .collect();
    assert_eq!(
        exists(&mut conn, &leases).await,
        0,
        "leases taken by a request the batch gave up on are still held"
    );
}

/// The same for one key through `get_or_load`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_lease_request_timed_out_leaves_no_lease_behind() {
    let redis = redis_server();
    let cache = fragile(&redis, "ls");
    let warm = cache.get_or_load("warm", || async { Ok::<_, DbDown>(Some(0u8)) });
    warm.await.unwrap();
    let mut conn = raw(&redis).await;
    pause_writes(&mut conn, 400).await;
    let got = cache
        .get_or_load("s", || async { Ok::<_, DbDown>(Some("s".to_owned())) })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("s"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let lease = format!("{}:l", cache.physical_key("s"));
    assert_eq!(
        exists(&mut conn, &[lease]).await,
        0,
        "the lease taken by a request the load gave up on is still held"
    );
}

/// Scripts run since the last `CONFIG RESETSTAT`, from Redis.
async fn scripts_run(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    commandstats(conn)
        .await
        .get("evalsha")
        .copied()
        .unwrap_or(0)
}

/// 300 values of 1 MiB. Written in one request, the fill could not reach
/// Redis within the default backend timeout (250 ms): it counted as a
/// backend failure (feeding the breaker of the whole cache) and cached
/// nothing. Fills and `set_many` carry at most 4 MiB of values per request
/// (checked by counting Redis's script calls, which does not depend on the
/// machine's speed), and every value is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_written_in_requests_of_at_most_4_mib() {
    let redis = redis_server();
    let cache = builder("big")
        .backend(redis_backend(&redis))
        .backend_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let value: String = (0..1 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let v = value.clone();
    let mut conn = raw(&redis).await;
    reset_stats(&mut conn).await;
    let got = cache
        .get_many_or_load(keys.clone(), move |keys| async move {
            Ok::<_, DbDown>(keys.into_iter().map(|k| (k, v.clone())).collect())
        })
        .await
        .unwrap();
    assert!(got.iter().all(|g| g.as_deref() == Some(value.as_str())));
    // The fills are the only scripts (the lease request is plain
    // commands): 300 MiB in requests of 4 MiB.
    let fills = scripts_run(&mut conn).await;
    assert!(fills >= 75, "300 MiB filled in {fills} requests");
    let s = cache.stats();
    assert_eq!((s.sets, s.backend_timeouts), (300, 0), "{s:?}");
    let stored: Vec<String> = keys.iter().map(|k| cache.physical_key(k)).collect();
    assert_eq!(exists(&mut conn, &stored).await, 300);

    reset_stats(&mut conn).await;
    let items: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), value.clone())).collect();
    cache.set_many(items).await.unwrap();
    let writes = scripts_run(&mut conn).await;
    assert!(writes >= 75, "300 MiB set in {writes} requests");
}

/// The fills of a large batch take several requests (and encoding a
/// hundred values of 1 MiB takes a while): the batch's leases must stay
/// renewed until the last one, or the later fills find their lease lapsed
/// and are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_leases_are_kept_until_its_last_fill() {
    let redis = redis_server();
    let cache = builder("lr")
        .backend(redis_backend(&redis))
        .lease_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    // Made beforehand: a loader busy on the CPU would hold up the renewal.
    let found: HashMap<String, String> = keys
        .iter()
        .map(|k| (k.clone(), "v".repeat(1 << 20)))
        .collect();
    cache
        .get_many_or_load(keys, move |_| async move { Ok::<_, DbDown>(found) })
        .await
        .unwrap();
    let s = cache.stats();
    assert_eq!((s.sets, s.stale_fills_rejected), (100, 0), "{s:?}");
}
