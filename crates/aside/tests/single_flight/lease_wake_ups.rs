//! How soon a load waiting for another process's lease hears that lease's
//! fill when the fill subscription comes back during the wait.

use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Never;

async fn control(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn acl_subscribe(ctl: &mut redis::aio::MultiplexedConnection, allowed: bool) {
    let rule = if allowed { "+subscribe" } else { "-subscribe" };
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(rule)
        .query_async(ctl)
        .await
        .unwrap();
}

/// How many connections are subscribed to a channel now.
async fn subscribers(ctl: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(ctl)
        .await
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A load waiting for another process's lease registers its fill watch
/// before each attempt; a watch registered while the backend's fill
/// subscription was down is not relied on alone (the waiter also re-checks
/// on a backoff of up to 200 ms), but a wake-up on it is still a wake-up:
/// when the subscription comes back (which wakes every watch) and the
/// holder then fills, the waiter hears it at once instead of sleeping out
/// its backoff pause.
///
/// Three rounds, each: the waiter's subscription is refused (ACL), the
/// holder (a backend without a subscription of its own) takes the lease,
/// the waiter waits a second (its backoff reaches 200 ms), the subscription
/// is allowed and comes back, and the holder's load finishes at once. The
/// waiter must have its value within 60 ms of that fill in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_waiter_hears_the_fill_once_its_subscription_is_back() {
    let redis = aside_test::fixtures::redis_server();
    let url = redis.url();
    let mut ctl = control(&url).await;
    acl_subscribe(&mut ctl, false).await;
    let builder = |backend: RedisBackend| {
        Cache::builder()
            .namespace("wake")
            .backend(backend)
            .backend_timeout(Duration::from_secs(2))
            .lease_ttl(Duration::from_secs(30))
            .lease_wait(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let manager = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let holder = builder(RedisBackend::from_connection_manager(manager));
    let waiter = builder(RedisBackend::new(&url).unwrap());
    let mut late = Vec::new();
    for round in 0..3 {
        let key = format!("k{round}");
        let lease = format!("{}:l", holder.physical_key(&key));
        // The waiter's subscription is down (refused at every attempt).
        acl_subscribe(&mut ctl, false).await;
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut ctl)
            .await
            .unwrap_or(());
        until("the subscription to go", async || {
            subscribers(&mut ctl).await == 0
        })
        .await;
        // The holder takes the lease and loads until told to finish.
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let h = holder.clone();
        let k = key.clone();
        let held = tokio::spawn(async move {
            h.get_or_load(&k, move || async move {
                let _ = finished.await;
                Ok::<_, Never>(Some(1u32))
            })
            .await
        });
        until("the holder's lease", async || {
            redis::cmd("EXISTS")
                .arg(&lease)
                .query_async::<bool>(&mut ctl)
                .await
                .unwrap()
        })
        .await;
        let w = waiter.clone();
        let k = key.clone();
        let waiting = tokio::spawn(async move {
            let got = w
                .get_or_load(&k, || async { Ok::<_, Never>(Some(2u32)) })
                .await;
            (got, Instant::now())
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The subscription comes back; the holder's load finishes at once.
        acl_subscribe(&mut ctl, true).await;
        until("the subscription to return", async || {
            subscribers(&mut ctl).await == 1
        })
        .await;
        let filled_at = Instant::now();
        finish.send(()).unwrap();
        assert_eq!(held.await.unwrap().unwrap(), Some(1));
        let (got, done_at) = waiting.await.unwrap();
        assert_eq!(got.unwrap(), Some(1), "round {round}: the holder's value");
        late.push(done_at.saturating_duration_since(filled_at));
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("the waiter's answer came after the fill by {late:?}");
    }
    assert!(
        late.iter().all(|d| *d < Duration::from_millis(60)),
        "the waiter slept out its backoff after the fill was announced: {late:?}"
    );
}
