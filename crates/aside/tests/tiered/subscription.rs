//! The backplane subscription: a read that spans a lost subscription
//! copies nothing, L1 is not used while it is down, and dropping the
//! backend (scripted, or over Redis) ends it.

use aside::backend::TieredBackend;
use aside_test::fixtures::redis_server;

use crate::scripted::{Bus, Gated, cache_over, eventually, get, load, tiered};

/// A read of L2 taken before a lost message and put after the subscription
/// is back finds its epoch gone: the copy is not made.
#[tokio::test]
async fn a_read_spanning_a_lost_subscription_copies_nothing() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, _ab) = tiered(&l2, Some(&bus));
    let (b, bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(load(&a, "k", "old").await.as_deref(), Some("old"));
    let (reached, release) = l2.ctl.get.arm();
    let reader = tokio::spawn({
        let b = b.clone();
        async move { get(&b, "k").await }
    });
    reached.await.unwrap();
    bus.disconnect_all();
    // While b is away: a's invalidation, and its message, are lost to b.
    assert!(a.invalidate("k").await.unwrap().is_applied());
    bus.connect_all();
    release.send(()).unwrap();
    assert_eq!(reader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(get(&b, "k").await, None, "{:?}", bb.stats());
}

/// While the subscription is down, reads go to L2 (a copy made before is
/// not served), and nothing read meanwhile is copied.
#[tokio::test]
async fn while_the_subscription_is_down_l1_is_not_used() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (b, bb) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(load(&b, "k", "old").await.as_deref(), Some("old"));
    bus.disconnect_all();
    // Changed in L2 by someone b cannot hear.
    cache_over(l2.inner.clone())
        .set("k", "new".to_owned())
        .await
        .unwrap();
    let misses = bb.stats().l1_misses;
    assert_eq!(get(&b, "k").await.as_deref(), Some("new"));
    assert_eq!(get(&b, "k").await.as_deref(), Some("new"));
    assert_eq!(bb.stats().l1_misses, misses + 2);
}

/// Dropping the cache and backend ends the subscription (the listener is
/// gone), and a message after that is harmless.
#[tokio::test]
async fn dropping_the_backend_ends_its_subscription() {
    let l2 = Gated::new();
    let bus = Bus::default();
    let (a, ab) = tiered(&l2, Some(&bus));
    bus.connect_all();
    assert_eq!(bus.live_listeners(), 1);
    drop((a, ab));
    assert_eq!(bus.live_listeners(), 0);
    bus.deliver(br#"{"v":1,"op":"keys","keys":["x"]}"#);
    bus.connect_all();
}

/// The same on Redis: the subscriber task stops with its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_redis_backed_tier_unsubscribes() {
    use aside::backend::RedisBackend;
    let redis = redis_server();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let subscribers = |mut conn: redis::aio::MultiplexedConnection| async move {
        let r: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("review:events")
            .query_async(&mut conn)
            .await
            .unwrap();
        r.1
    };
    let events = RedisBackend::new(&redis.url()).unwrap();
    let backend = TieredBackend::builder(RedisBackend::new(&redis.url()).unwrap())
        .backplane(events.backplane("review:events").unwrap())
        .build()
        .unwrap();
    let cache = cache_over(backend.clone());
    eventually("subscribed", || {
        let conn = conn.clone();
        async move { subscribers(conn).await == 1 }
    })
    .await;
    drop((cache, backend, events));
    eventually("unsubscribed", || {
        let conn = conn.clone();
        async move { subscribers(conn).await == 0 }
    })
    .await;
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}
