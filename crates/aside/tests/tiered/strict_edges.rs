//! The edges of the staleness bound and of strict invalidation, on a real
//! Redis: the registry's clock stepping forward, an injected clock, a
//! reconnection during a write, and settings at their limits. (The
//! healthy and faulty runs across OS processes are in the `processes`
//! binary: `processes::strict`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Weak;

use aside::backend::{
    BackendError, Backplane, BackplaneListener, BackplaneSubscription, Live, Membership,
    Publishing, RedisBackend, RedisBackplane, Strict, TieredBackend,
};
use aside::clock::{Clock, ManualClock, SystemClock};
use aside::{Cache, Invalidation};
use aside_test::Proxy;
use aside_test::fixtures::until_live;
use aside_test::fixtures::{DbError, redis_server};

const CHANNEL: &str = "aside:events";

/// A tiered cache over `data_url`, hearing the backplane through
/// `events_url`.
fn tier(
    data_url: &str,
    events_url: &str,
    strict: Option<Strict>,
    bound: Option<Duration>,
    clock: Arc<dyn Clock>,
) -> (Cache, TieredBackend) {
    let events = RedisBackend::new(events_url).unwrap();
    let mut builder = TieredBackend::builder(RedisBackend::new(data_url).unwrap())
        .max_l1_age(Duration::from_secs(60))
        .max_staleness(bound)
        .clock(clock.clone())
        .backplane(events.backplane(CHANNEL).unwrap());
    if let Some(strict) = strict {
        builder = builder.strict(strict);
    }
    let backend = builder.build().unwrap();
    let cache = Cache::builder()
        .namespace("review")
        .ttl(Duration::from_secs(60))
        .clock(clock)
        .backend(backend.clone())
        .build()
        .unwrap();
    (cache, backend)
}

/// A strict instance on the system clock without a staleness bound (only
/// strict invalidation guards its copies), over `data_url`, hearing the
/// backplane through `events_url`.
fn strict(data_url: &str, events_url: &str, settings: Strict) -> (Cache, TieredBackend) {
    tier(
        data_url,
        events_url,
        Some(settings),
        None,
        Arc::new(SystemClock),
    )
}

/// A strict instance over `data_url` hearing `backplane` (a wrapped one).
fn strict_over(
    data_url: &str,
    backplane: impl Backplane + 'static,
    settings: Strict,
) -> (Cache, TieredBackend) {
    let backend = TieredBackend::builder(RedisBackend::new(data_url).unwrap())
        .max_l1_age(Duration::from_secs(60))
        .backplane(backplane)
        .strict(settings)
        .build()
        .unwrap();
    let cache = Cache::builder()
        .namespace("review")
        .ttl(Duration::from_secs(60))
        .backend(backend.clone())
        .build()
        .unwrap();
    (cache, backend)
}

/// Waits until every backend is subscribed, then until the young
/// registry has settled and the clock checks agree (a lease and a bit).
async fn settled(backends: &[&TieredBackend]) {
    for backend in backends {
        until_live(backend).await;
    }
    tokio::time::sleep(Duration::from_millis(2_200)).await;
}

/// Reads `key`; the loader answers the current `truth`.
async fn read(cache: &Cache, key: &str, truth: &Arc<AtomicU64>) -> u64 {
    let truth = truth.clone();
    cache
        .get_or_load(key, move || async move {
            Ok::<_, DbError>(Some(truth.load(Ordering::SeqCst)))
        })
        .await
        .unwrap()
        .unwrap()
}

/// Reads `key` until a read is an L1 hit (strict: once registered).
async fn until_l1_hit(cache: &Cache, backend: &TieredBackend, key: &str, truth: &Arc<AtomicU64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let hits = backend.stats().l1_hits;
        read(cache, key, truth).await;
        if backend.stats().l1_hits > hits {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never an L1 hit: {:?}",
            backend.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Redis backplane as seen by an instance whose registry's clock
/// stepped forward by `ahead` ms (an NTP step on the Redis host, a
/// failover to a replica whose clock is ahead): the store's time reads
/// later, so every lease in the registry looks that much shorter. Redis's
/// `TIME` cannot be moved from a test; this is what the contract then
/// answers. With `lose_on_revoke`, the registry is deleted (an eviction, a
/// restart) just before each revocation, after the writer listed it.
#[derive(Debug)]
struct StepsForward {
    inner: RedisBackplane,
    ahead: Arc<AtomicU64>,
    lose_on_revoke: Option<redis::Client>,
}

impl Backplane for StepsForward {
    fn publish(&self, message: Vec<u8>) -> Publishing {
        self.inner.publish(message)
    }

    fn send_to(&self, instance: &str, message: Vec<u8>) -> Publishing {
        self.inner.send_to(instance, message)
    }

    fn subscribe(
        &self,
        instance: &str,
        listener: Weak<dyn BackplaneListener>,
    ) -> BackplaneSubscription {
        self.inner.subscribe(instance, listener)
    }

    fn heartbeat(&self) -> Option<Duration> {
        Backplane::heartbeat(&self.inner)
    }

    fn members(&self) -> Option<&dyn Membership> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl Membership for StepsForward {
    async fn renew(
        &self,
        instance: &str,
        lease: Duration,
        register: bool,
    ) -> Result<Option<u64>, BackendError> {
        let ahead = self.ahead.load(Ordering::SeqCst);
        let renewed = self.inner.renew(instance, lease, register).await?;
        Ok(renewed.map(|t| t + ahead))
    }

    async fn live(&self, longest_lease: Duration) -> Result<Live, BackendError> {
        let ahead = Duration::from_millis(self.ahead.load(Ordering::SeqCst));
        let live = self.inner.live(longest_lease).await?;
        let members = live
            .members
            .into_iter()
            .filter(|(_, left)| *left > ahead)
            .map(|(id, left)| (id, left - ahead))
            .collect();
        let ahead_ms = u64::try_from(ahead.as_millis()).unwrap();
        Ok(Live::new(members, live.settling, live.as_of + ahead_ms))
    }

    async fn revoke(
        &self,
        instance: &str,
        longest_lease: Duration,
    ) -> Result<Option<u64>, BackendError> {
        if let Some(client) = &self.lose_on_revoke {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: i64 = redis::cmd("DEL")
                .arg(format!("{CHANNEL}:members"))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        self.inner.revoke(instance, longest_lease).await
    }

    fn leave(&self, instance: &str) {
        self.inner.leave(instance);
    }
}

/// When the registry's clock steps forward by a lease, every member drops
/// out of its list at once while each may still hold its local lease (up
/// to `member_lease - drift_margin` on its own clock), and the registry is
/// older than a lease, so it is not settling either. A strict write then
/// must not take the empty list at its word: the writer sees the store's
/// time run ahead of its own since its last renewal and waits a lease. B's
/// backplane is silent (a half-open subscription), and B runs without
/// `max_staleness`, so that only its lease guards its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_step_of_the_registrys_clock_is_waited_out() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let truth = Arc::new(AtomicU64::new(1));
    let (b, b_backend) = strict(&redis.url(), &proxy.url(), Strict::new());
    let ahead = Arc::new(AtomicU64::new(0));
    let stepping = StepsForward {
        inner: RedisBackend::new(&redis.url())
            .unwrap()
            .backplane(CHANNEL)
            .unwrap(),
        ahead: ahead.clone(),
        lose_on_revoke: None,
    };
    let (a, a_backend) = strict_over(&redis.url(), stepping, Strict::new());
    until_live(&a_backend).await;
    until_live(&b_backend).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;
    // The registry is older than one lease, and A's clock check agrees.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;
    let quick = Instant::now();
    assert_eq!(a.invalidate("warm").await.unwrap(), Invalidation::Applied);
    assert!(
        quick.elapsed() < Duration::from_millis(500),
        "a healthy write waits for nobody's lease: {:?}",
        quick.elapsed()
    );

    // B's subscription goes silent; the registry's clock steps forward.
    proxy.blackhole(true);
    ahead.store(2_000, Ordering::SeqCst);
    truth.store(2, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(a.invalidate("k").await.unwrap(), Invalidation::Applied);
    let took = started.elapsed();
    let got = read(&b, "k", &truth).await;
    assert_eq!(
        got,
        2,
        "B served version 1 after a strict write returned Applied in {took:?}; B: {:?}",
        b_backend.stats()
    );
    // B's last renewal was at most a quarter lease before the silence: its
    // local lease runs at most 1.9 s after that.
    assert!(
        took >= Duration::from_millis(1_900),
        "the write waited {took:?}, less than B may still serve its copy"
    );
}

/// The staleness bound is real time shared with other processes: it is
/// counted on the system's boot clock whatever clock the tier is given
/// for its entries (`TieredBackendBuilder::clock`). B, on a `ManualClock`,
/// and B2, on the system's, both hear the backplane through a silent
/// proxy: both stop serving their copies within `max_staleness` of the
/// last heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_clock_does_not_turn_off_the_staleness_bound() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let truth = Arc::new(AtomicU64::new(1));
    let bound = Some(Duration::from_millis(100));
    let manual = Arc::new(ManualClock::new(1_000));
    let (b, b_backend) = tier(
        &redis.url(),
        &proxy.url(),
        None,
        bound,
        manual.clone() as Arc<dyn Clock>,
    );
    let (b2, b2_backend) = tier(
        &redis.url(),
        &proxy.url(),
        None,
        bound,
        Arc::new(SystemClock),
    );
    let (a, a_backend) = tier(
        &redis.url(),
        &redis.url(),
        None,
        bound,
        Arc::new(SystemClock),
    );
    until_live(&a_backend).await;
    until_live(&b_backend).await;
    until_live(&b2_backend).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;
    until_l1_hit(&b2, &b2_backend, "k", &truth).await;

    proxy.blackhole(true);
    let silent_at = Instant::now();
    truth.store(2, Ordering::SeqCst);
    assert_eq!(a.invalidate("k").await.unwrap(), Invalidation::Applied);
    // Twice the bound after the write returned (B's clock moves with it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    manual.advance(Duration::from_millis(200));
    let control = read(&b2, "k", &truth).await;
    let got = read(&b, "k", &truth).await;
    let at = silent_at.elapsed();
    assert!(
        at < Duration::from_millis(450),
        "too slow to show it (the subscriptions may have noticed the silence): {at:?}"
    );
    assert_eq!(control, 2, "the control (system clock) served a stale copy");
    assert_eq!(
        got,
        2,
        "B (ManualClock) served version 1 200 ms after the invalidation returned, with \
         max_staleness 100 ms: {:?}",
        b_backend.stats()
    );
}

/// `ack_timeout(Duration::MAX)` (a "wait as long as it takes" setting) is
/// refused at `build` with a configuration error, or its writes are
/// applied: never a write that panics in its task and is queued again and
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_ack_timeout_does_not_panic_writes() {
    let redis = redis_server();
    let strict = Strict::new().ack_timeout(Duration::MAX);
    let events = RedisBackend::new(&redis.url()).unwrap();
    let built = TieredBackend::builder(RedisBackend::new(&redis.url()).unwrap())
        .backplane(events.backplane(CHANNEL).unwrap())
        .strict(strict)
        .build();
    // Refusing the setting is a fine answer too.
    let Ok(backend) = built else { return };
    let cache = Cache::builder()
        .namespace("review")
        .backend(backend.clone())
        .build()
        .unwrap();
    until_live(&backend).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), cache.invalidate("k"))
        .await
        .expect("the write never returned");
    assert_eq!(
        outcome.unwrap(),
        Invalidation::Applied,
        "a strict write with ack_timeout(Duration::MAX) was not applied (its task panicked \
         on `Instant + Duration` overflow); pending: {}",
        cache.pending_invalidations()
    );
}

/// A reader whose subscription reconnects while a write is published (a
/// blip: the connection reset, subscribed again moments later) never hears
/// that message, so it never acknowledges it; but its reconnection dropped
/// every copy, and it says so (`rejoin`, then `rejoined` once it heard its
/// own `rejoin` back, so everything published before was applied). The
/// writer counts that as the acknowledgement: no revocation, no lease
/// waited out, and the read after it is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_reconnects_during_a_write_is_not_revoked() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let truth = Arc::new(AtomicU64::new(1));
    let (b, b_backend) = strict(&redis.url(), &proxy.url(), Strict::new());
    let (a, a_backend) = strict(&redis.url(), &redis.url(), Strict::new());
    settled(&[&a_backend, &b_backend]).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;
    assert_eq!(a.invalidate("warm").await.unwrap(), Invalidation::Applied);
    let before = a_backend.stats().revocations;

    proxy.cut();
    truth.store(2, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(a.invalidate("k").await.unwrap(), Invalidation::Applied);
    let took = started.elapsed();
    // Still safe: B's reconnection dropped its copy.
    assert_eq!(read(&b, "k", &truth).await, 2);
    assert!(
        a_backend.stats().revocations == before && took < Duration::from_secs(1),
        "a write overlapping B's reconnection revoked B ({} revocations) and took {took:?}",
        a_backend.stats().revocations - before
    );
}

/// Acknowledgements that are not B's, sent to every instance's own
/// channel while B is silent: bytes that are not a message, an ack of
/// another format version, one without a sender (another service), one
/// from an instance that is not registered, each claiming everything up to
/// `u64::MAX` was applied. None of them counts for B: the write waits for
/// B's acknowledgement, revokes B and waits out its lease, and nothing
/// panics. (An acknowledgement in B's name is B's: see "Trust" in
/// docs/tiered.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_foreign_acknowledgements_count_for_nobody() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let truth = Arc::new(AtomicU64::new(1));
    let (b, b_backend) = strict(&redis.url(), &proxy.url(), Strict::new());
    let (a, a_backend) = strict(&redis.url(), &redis.url(), Strict::new());
    settled(&[&a_backend, &b_backend]).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;
    assert_eq!(a.invalidate("warm").await.unwrap(), Invalidation::Applied);

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{CHANNEL}:members"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let instances: Vec<String> = members
        .into_iter()
        .filter(|m| !m.starts_with('~'))
        .collect();
    assert_eq!(instances.len(), 2, "{instances:?}");
    let junk: [&[u8]; 4] = [
        b"\x00\xffnot a message",
        br#"{"v":2,"op":"ack","src":"x","seq":18446744073709551615}"#,
        br#"{"v":1,"op":"ack","seq":18446744073709551615}"#,
        br#"{"v":1,"op":"ack","src":"nobody","seq":18446744073709551615}"#,
    ];
    let spam = {
        let mut conn = conn.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                for id in &instances {
                    for message in junk {
                        let _: i64 = redis::cmd("PUBLISH")
                            .arg(format!("{CHANNEL}:to:{id}"))
                            .arg(message)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    proxy.blackhole(true);
    let before = a_backend.stats().revocations;
    truth.store(2, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(a.invalidate("k").await.unwrap(), Invalidation::Applied);
    let took = started.elapsed();
    spam.await.unwrap();
    assert!(
        a_backend.stats().revocations == before + 1 && took >= Strict::new().ack_timeout,
        "acknowledgements not from B counted for B: {} revocations, the write took {took:?}",
        a_backend.stats().revocations - before
    );
    // B's lease is over: whatever it serves is current.
    assert_eq!(read(&b, "k", &truth).await, 2);
    proxy.blackhole(false);
}

/// A write that revokes B (it did not acknowledge in time) waits out B's
/// lease; so must every other write until that lease is over, although B
/// is no longer registered: B learns of its revocation only at its next
/// renewal, and serves its copies until then. Here A (impatient) revokes B,
/// whose subscription alone went silent, and A2 writes another key while
/// A waits: A2's write returns only once B can no longer serve the old
/// copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_another_writes_revocation_waits_for_the_revoked_instance() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let (t1, t2) = (Arc::new(AtomicU64::new(1)), Arc::new(AtomicU64::new(1)));
    let (b, b_backend) = strict(&redis.url(), &proxy.url(), Strict::new());
    let impatient = Strict::new().ack_timeout(Duration::from_millis(100));
    let (a, a_backend) = strict(&redis.url(), &redis.url(), impatient);
    let (a2, a2_backend) = strict(&redis.url(), &redis.url(), Strict::new());
    settled(&[&a_backend, &a2_backend, &b_backend]).await;
    until_l1_hit(&b, &b_backend, "k1", &t1).await;
    until_l1_hit(&b, &b_backend, "k2", &t2).await;
    assert_eq!(a2.invalidate("warm").await.unwrap(), Invalidation::Applied);
    assert_eq!(read(&b, "k2", &t2).await, 1);

    proxy.blackhole_subscriptions(true);
    t1.store(2, Ordering::SeqCst);
    let revoking = tokio::spawn(async move { a.invalidate("k1").await });
    let until = Instant::now() + Duration::from_secs(2);
    while a_backend.stats().revocations == 0 {
        assert!(Instant::now() < until, "A never revoked B");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t2.store(2, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(a2.invalidate("k2").await.unwrap(), Invalidation::Applied);
    let took = started.elapsed();
    let got = read(&b, "k2", &t2).await;
    assert_eq!(
        got, 2,
        "B served the copy A2's write removed, {took:?} after A revoked B: A2 did not wait for it"
    );
    assert_eq!(revoking.await.unwrap().unwrap(), Invalidation::Applied);
    proxy.blackhole_subscriptions(false);
}

/// The registry is lost (evicted, a restart) after a writer listed it and
/// before it revokes a silent member: the revocation finds no lease to
/// tell its end, while the member may still serve copies for up to a
/// lease. The write waits a whole lease from the revocation, not only what
/// was listed. (A's lease is longer than B's, so that the two waits tell
/// apart: what was listed of B's is at most 2 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_lost_before_a_revocation_is_waited_out() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let truth = Arc::new(AtomicU64::new(1));
    let (b, b_backend) = strict(&redis.url(), &proxy.url(), Strict::new());
    let losing = StepsForward {
        inner: RedisBackend::new(&redis.url())
            .unwrap()
            .backplane(CHANNEL)
            .unwrap(),
        ahead: Arc::new(AtomicU64::new(0)),
        lose_on_revoke: Some(redis::Client::open(redis.url()).unwrap()),
    };
    let strict = Strict::new()
        .ack_timeout(Duration::from_millis(100))
        .member_lease(Duration::from_secs(3));
    let (a, a_backend) = strict_over(&redis.url(), losing, strict);
    until_live(&a_backend).await;
    until_live(&b_backend).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;
    tokio::time::sleep(Duration::from_millis(3_600)).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;

    proxy.blackhole(true);
    truth.store(2, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(a.invalidate("k").await.unwrap(), Invalidation::Applied);
    let took = started.elapsed();
    assert_eq!(read(&b, "k", &truth).await, 2);
    assert!(
        took >= strict.ack_timeout + strict.member_lease,
        "the write waited {took:?}: less than a lease after a revocation that found the \
         registry gone"
    );
    proxy.blackhole(false);
}

/// Something else wrote a value of another type at the registry's key:
/// the registry scripts treat it as a lost registry (replaced, then waited
/// out for a lease) rather than failing every strict write until someone
/// deletes it by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_at_the_registry_is_replaced() {
    let redis = redis_server();
    let (a, a_backend) = strict(&redis.url(), &redis.url(), Strict::new());
    until_live(&a_backend).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{CHANNEL}:members"))
        .arg("not a registry")
        .query_async(&mut conn)
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        if a.invalidate("k").await.unwrap() == Invalidation::Applied {
            break;
        }
        assert!(
            Instant::now() < until,
            "strict writes never applied again after a foreign value took the registry's key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ty: String = redis::cmd("TYPE")
        .arg(format!("{CHANNEL}:members"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ty, "zset");
}

/// The writer's own subscription lags (here: silent, not yet noticed),
/// while its commands go through: B and C acknowledge at once, but their
/// acknowledgements do not reach A. A must not revoke them (that would
/// drop every healthy instance's copies): a heartbeat of its own that does
/// not come back tells it it cannot hear, and the write fails (the cache
/// queues it and retries) instead of revoking anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_cannot_hear_acknowledgements_revokes_nobody() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let impatient = Strict::new().ack_timeout(Duration::from_millis(100));
    let (a, a_backend) = strict(&redis.url(), &proxy.url(), impatient);
    let (_b, b_backend) = strict(&redis.url(), &redis.url(), Strict::new());
    let (_c, c_backend) = strict(&redis.url(), &redis.url(), Strict::new());
    settled(&[&a_backend, &b_backend, &c_backend]).await;
    assert_eq!(a.invalidate("warm").await.unwrap(), Invalidation::Applied);
    let gaps = (b_backend.stats().gaps, c_backend.stats().gaps);

    proxy.blackhole_subscriptions(true);
    let outcome = a.invalidate("k").await.unwrap();
    proxy.blackhole_subscriptions(false);
    assert_eq!(
        a_backend.stats().revocations,
        0,
        "A revoked instances whose acknowledgements it could not hear ({outcome:?})"
    );
    assert_ne!(outcome, Invalidation::Applied);
    // Nobody was told to drop its copies.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!((b_backend.stats().gaps, c_backend.stats().gaps), gaps);
}

/// Redis under `maxmemory` (`allkeys-random`) evicts the registry while B
/// is cut off: the next write cannot know who held leases, and waits for
/// the registry (new, or missing) to be a lease old before it returns; B,
/// which may still serve its copy until its lease ends, cannot serve it
/// after the write returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_evicted_under_maxmemory_is_waited_out() {
    let redis = aside_test::RedisServer::builder()
        .arg("--maxmemory")
        .arg("8mb")
        .arg("--maxmemory-policy")
        .arg("allkeys-random")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let truth = Arc::new(AtomicU64::new(1));
    let (b, b_backend) = strict(&redis.url(), &proxy.url(), Strict::new());
    let (a, a_backend) = strict(
        &redis.url(),
        &redis.url(),
        Strict::new().ack_timeout(Duration::from_millis(100)),
    );
    settled(&[&a_backend, &b_backend]).await;
    until_l1_hit(&b, &b_backend, "k", &truth).await;
    assert_eq!(a.invalidate("warm").await.unwrap(), Invalidation::Applied);

    proxy.blackhole(true);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let registry = format!("{CHANNEL}:members");
    let filler = vec![b'x'; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&registry)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(Instant::now() < until, "the registry was never evicted");
        let mut pipe = redis::pipe();
        for _ in 0..16 {
            pipe.cmd("SET")
                .arg(format!("filler:{n}"))
                .arg(&filler)
                .ignore();
            n += 1;
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    truth.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let outcome = a.invalidate("k").await.unwrap();
    let took = started.elapsed();
    assert_eq!(outcome, Invalidation::Applied);
    assert_eq!(
        read(&b, "k", &truth).await,
        2,
        "B served its copy after a write returned in {took:?} with the registry evicted"
    );
    assert!(
        took >= Duration::from_millis(1_500),
        "the write after the registry was evicted waited only {took:?}"
    );
    proxy.blackhole(false);
}

/// The writer's subscription reconnects while it waits (an output buffer
/// limit cut it, a blip): the acknowledgements the old connection held are
/// lost, and the new connection's heartbeats come back at once. That must
/// not pass for "heard everything": A revokes nobody and the write fails
/// (queued, retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_subscription_reconnects_while_it_waits_revokes_nobody() {
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let impatient = Strict::new().ack_timeout(Duration::from_millis(200));
    let (a, a_backend) = strict(&redis.url(), &proxy.url(), impatient);
    let (_b, b_backend) = strict(&redis.url(), &redis.url(), Strict::new());
    settled(&[&a_backend, &b_backend]).await;
    assert_eq!(a.invalidate("warm").await.unwrap(), Invalidation::Applied);

    proxy.blackhole_subscriptions(true);
    let writing = tokio::spawn(async move { a.invalidate("k").await });
    // B's acknowledgement is held on A's old connection; then that
    // connection goes (what it held with it) and a new one works.
    tokio::time::sleep(Duration::from_millis(80)).await;
    proxy.cut();
    proxy.blackhole_subscriptions(false);
    let outcome = writing.await.unwrap().unwrap();
    assert_eq!(
        a_backend.stats().revocations,
        0,
        "A revoked B, whose acknowledgement its lost connection held ({outcome:?})"
    );
    assert_ne!(outcome, Invalidation::Applied);
}

/// `max_l1_age` over 1,000 years (`Duration::MAX` for "never expire
/// copies") is a configuration error, not a panic in the in-process
/// cache's builder.
#[test]
fn an_unbounded_max_l1_age_is_a_config_error_not_a_panic() {
    let built = std::panic::catch_unwind(|| {
        TieredBackend::builder(aside::backend::MemoryBackend::new())
            .max_l1_age(Duration::MAX)
            .build()
            .map(|_| ())
    });
    assert!(
        matches!(built, Ok(Err(_)) | Ok(Ok(()))),
        "TieredBackendBuilder::build panicked on max_l1_age(Duration::MAX)"
    );
}
