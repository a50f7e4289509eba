//! What a batch leaves in Redis: after loads that succeed, fail, panic,
//! hang past the hard timeout, are abandoned by their caller or wait for a
//! lease held by another instance, and after `set_many` and invalidations,
//! every key (entries, markers, leases, waiter flags, tag tokens) is gone
//! once the TTLs ran out.

use super::*;
use aside::EntryOptions;

fn short_lived(redis: &RedisServer) -> Cache {
    builder("lk")
        .backend(redis_backend(redis))
        .ttl(Duration::from_millis(300))
        .ttl_jitter(0.0)
        .negative_ttl(Some(Duration::from_millis(200)))
        .invalidation_marker_ttl(Duration::from_millis(400))
        .lease_ttl(Duration::from_millis(60))
        .lease_wait(Duration::from_millis(300))
        .loader_hard_timeout(Some(Duration::from_millis(150)))
        .build()
        .unwrap()
}

async fn dbsize(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE").query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_in_redis_once_the_ttls_ran_out() {
    let redis = redis_server();
    let cache = short_lived(&redis);
    let other = short_lived(&redis);
    let tagged = EntryOptions::new().tag("t");
    let ks = |p: &str| -> Vec<String> { (0..20).map(|i| format!("{p}{i}")).collect() };

    // Found, and left out (negative entries), with a tag.
    let got = cache
        .get_many_or_load_with(ks("ok"), &tagged, |keys| async move {
            Ok::<_, DbDown>(keys.into_iter().skip(5).map(|k| (k.clone(), k)).collect())
        })
        .await
        .unwrap();
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 5);
    // Fails, panics, hangs past the hard timeout.
    let failed = cache
        .get_many_or_load(ks("err"), |_| async {
            Err::<HashMap<String, String>, _>(DbDown)
        })
        .await;
    assert!(failed.is_err());
    let panicked = cache
        .get_many_or_load(ks("panic"), |_| async {
            if true {
                panic!("boom");
            }
            Ok::<HashMap<String, String>, DbDown>(HashMap::new())
        })
        .await;
    assert!(panicked.is_err());
    let hung = cache
        .get_many_or_load(ks("hang"), |_| async {
            std::future::pending::<()>().await;
            Ok::<HashMap<String, String>, DbDown>(HashMap::new())
        })
        .await;
    assert!(hung.is_err());
    // Abandoned by its caller mid-load: the load goes on in its task.
    let dropped = tokio::time::timeout(
        Duration::from_millis(20),
        cache.get_many_or_load(ks("drop"), |keys| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            echo(keys).await
        }),
    )
    .await;
    assert!(dropped.is_err());
    // Keys whose lease another instance holds while it loads slowly.
    let slow = tokio::spawn({
        let other = other.clone();
        async move {
            other
                .get_or_load("lease0", || async {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Ok::<_, DbDown>(Some("theirs".to_owned()))
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let got = cache.get_many_or_load(ks("lease"), echo).await.unwrap();
    assert_eq!(got.len(), 20);
    slow.await.unwrap().unwrap();
    // Writes and invalidations.
    let items: Vec<(String, String)> = ks("set").into_iter().map(|k| (k.clone(), k)).collect();
    cache.set_many_with(items, &tagged).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    cache.invalidate_many(ks("ok")).await.unwrap();
    let again = cache
        .get_many_or_load_with(ks("ok"), &tagged, echo)
        .await
        .unwrap();
    assert!(again.iter().all(Option::is_some));

    let mut conn = raw(&redis).await;
    assert!(dbsize(&mut conn).await > 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = dbsize(&mut conn).await;
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut conn)
                .await
                .unwrap();
            panic!("{left} keys outlived every TTL: {keys:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
