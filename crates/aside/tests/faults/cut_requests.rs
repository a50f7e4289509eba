//! A connection cut while one of aside's Redis requests is in flight, for
//! each request that changes state: the lease request (one pipeline of plain
//! commands: tokens, then per key its lease, its marker and the entry
//! re-read; cut at the key's lease), the conditional fills (FILL,
//! FILL_MANY), and the invalidations (a `DEL` of the key, of a tag's
//! token, of the namespace's token).
//!
//! A [`Proxy`] between cache A and Redis cuts A's connection at the chosen
//! request in one of two ways the client cannot tell apart: Redis received
//! all of it and ran it but the reply is dropped (`Ran`), or Redis received
//! all but its last byte and never ran it (`Lost`). In a pipeline the
//! commands before the cut one ran and those after it never arrive. Cache
//! B reads the same Redis directly: it is another process, and sees what A
//! left behind.
//!
//! What each test asserts is what a caller sees: a correct answer and no
//! error from `get_or_load`; no read, in either process, of a value loaded
//! before an invalidation that was applied; a failed invalidation queued and
//! retried, with this process's reads bypassing the cache until it lands;
//! and no lease left behind to hold up the next load (B's load would wait
//! up to the lease TTL, far longer than these tests allow).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::backend::RedisBackend;
use aside::{Cache, EntryOptions, Invalidation};
use aside_test::fixtures::{Never, redis_server};
use aside_test::redis_stats::raw;
use aside_test::{Proxy, RedisServer, RequestCut};
use tokio::sync::oneshot;

const NS: &str = "cut";
/// Long, so that a lease left behind would hold B up well past
/// `WITHIN`: a test that passes cannot have waited for one to lapse.
const LEASE_TTL: Duration = Duration::from_secs(20);
/// The bound on what must happen soon (a functional bound far from any
/// speed target: the lease TTL above, or never).
const WITHIN: Duration = Duration::from_secs(5);
/// The first retry of a queued invalidation: long enough to look at Redis
/// between the cut and the retry.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Redis ran the request; its reply is lost.
    Ran,
    /// Redis got all of the request but its last byte; it never ran.
    Lost,
}

impl Cut {
    fn apply(self, cut: RequestCut) -> RequestCut {
        match self {
            Cut::Ran => cut.after_request(),
            Cut::Lost => cut.within(usize::MAX),
        }
    }
}

struct Rig {
    redis: RedisServer,
    proxy: Proxy,
    /// Through the proxy: the process whose request is cut.
    a: Cache,
    /// Direct: another process.
    b: Cache,
    /// The database: one version for every row.
    db: Arc<AtomicU64>,
}

fn cache(url: &str) -> Cache {
    Cache::builder()
        .namespace(NS)
        .ttl(Duration::from_secs(60))
        .lease_ttl(LEASE_TTL)
        .lease_wait(Duration::from_secs(30))
        .backend_timeout(Duration::from_secs(2))
        .backend_retry_after(Duration::from_millis(50))
        .invalidation_retry(RETRY)
        .namespace_invalidation(true)
        .backend(RedisBackend::new(url).unwrap())
        .build()
        .unwrap()
}

impl Rig {
    async fn start() -> Rig {
        let redis = redis_server();
        let proxy = Proxy::to_port(redis.port()).unwrap();
        let (a, b) = (cache(&proxy.url()), cache(&redis.url()));
        let rig = Rig {
            redis,
            proxy,
            a,
            b,
            db: Arc::new(AtomicU64::new(1)),
        };
        assert_eq!(phys("k"), rig.a.physical_key("k"), "the cuts match");
        // Every script loaded (EVALSHA answers NOSCRIPT before that, and a
        // cut `Ran` must find a script that runs).
        rig.read(&rig.a, "warm").await;
        rig.read_many(&rig.a, &["warm1", "warm2"]).await;
        rig
    }

    fn loader(&self) -> impl FnOnce() -> std::future::Ready<Result<Option<u64>, Never>> + use<> {
        let v = self.db.load(Ordering::SeqCst);
        move || std::future::ready(Ok(Some(v)))
    }

    /// `get_or_load` of `key` from the database; any error fails the test.
    async fn read(&self, cache: &Cache, key: &str) -> u64 {
        let db = self.db.clone();
        let v = cache
            .get_or_load(key, move || async move {
                Ok::<_, Never>(Some(db.load(Ordering::SeqCst)))
            })
            .await;
        v.unwrap().unwrap()
    }

    async fn read_many(&self, cache: &Cache, keys: &[&str]) -> Vec<u64> {
        let db = self.db.clone();
        let v = cache
            .get_many_or_load(keys.iter().copied(), move |misses| async move {
                let v = db.load(Ordering::SeqCst);
                Ok::<_, Never>(
                    misses
                        .into_iter()
                        .map(|k| (k, v))
                        .collect::<HashMap<_, _>>(),
                )
            })
            .await;
        v.unwrap().into_iter().map(Option::unwrap).collect()
    }

    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        raw(&self.redis).await
    }

    /// Leases left in Redis on `keys`.
    async fn leases(&self, keys: &[&str]) -> Vec<String> {
        let mut conn = self.raw().await;
        let mut left = Vec::new();
        for key in keys {
            let lease = format!("{}:l", self.a.physical_key(key));
            let there: bool = redis::cmd("EXISTS")
                .arg(&lease)
                .query_async(&mut conn)
                .await
                .unwrap();
            if there {
                left.push(lease);
            }
        }
        left
    }

    /// Until `cache` hits again (bounded): the cut did not leave the cache
    /// unusable, and every answer on the way is the current row.
    async fn hits_resume(&self, cache: &Cache, key: &str) {
        let current = self.db.load(Ordering::SeqCst);
        let before = cache.stats().hits;
        let since = Instant::now();
        while cache.stats().hits == before {
            assert_eq!(self.read(cache, key).await, current);
            assert!(since.elapsed() < WITHIN, "no hit on {key} since the cut");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The script's cut during a load that an invalidation (by B) overtakes:
/// A's loader reads version 1, B writes version 2 and invalidates, then A's
/// load finishes and its request is cut.
async fn load_cut(batch: bool, cut: RequestCut) {
    let rig = Rig::start().await;
    let keys = ["k1", "k2", "k3"];
    let keys: &[&str] = if batch { &keys } else { &keys[..1] };
    rig.proxy.cut_request(cut);
    let (started_tx, started) = oneshot::channel::<()>();
    let (go, go_rx) = oneshot::channel::<()>();
    let gate = async move {
        let _ = started_tx.send(());
        let _ = go_rx.await;
    };
    let v1 = rig.db.load(Ordering::SeqCst);
    let a = rig.a.clone();
    let owned: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    let load = tokio::spawn(async move {
        if owned.len() > 1 {
            a.get_many_or_load(owned, move |misses| async move {
                gate.await;
                Ok::<_, Never>(
                    misses
                        .into_iter()
                        .map(|k| (k, v1))
                        .collect::<HashMap<_, _>>(),
                )
            })
            .await
            .map(|v| v.into_iter().map(Option::unwrap).collect::<Vec<u64>>())
        } else {
            a.get_or_load(&owned[0], move || async move {
                gate.await;
                Ok::<_, Never>(Some(v1))
            })
            .await
            .map(|v| vec![v.unwrap()])
        }
    });
    started.await.unwrap();
    rig.db.store(2, Ordering::SeqCst);
    let inv = rig.b.invalidate_many(keys.iter().copied()).await.unwrap();
    assert_eq!(inv, Invalidation::Applied);
    go.send(()).unwrap();
    // The caller's own load began before the invalidation: its value is
    // the answer to that call.
    let answer = load.await.unwrap();
    assert_eq!(answer.unwrap(), vec![v1; keys.len()], "no caller error");
    assert_eq!(rig.proxy.requests_cut(), 1, "the request was cut");
    // B, another process, loads the keys at once: no lease left behind
    // (it would wait for it up to LEASE_TTL), and never version 1.
    for key in keys {
        let b = tokio::time::timeout(WITHIN, rig.read(&rig.b, key)).await;
        assert_eq!(b.expect("B waited for a lease left behind"), 2, "{key}");
    }
    for key in keys {
        assert_eq!(
            rig.read(&rig.a, key).await,
            2,
            "A reads {key} after the invalidation"
        );
        rig.hits_resume(&rig.a, key).await;
    }
    let deadline = Instant::now() + WITHIN;
    loop {
        let left = rig.leases(keys).await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leases left: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each request, matched by what it sends and one of its keys (the proxy
/// sees each command of a pipeline as a request): the lease request is cut
/// at the key's `SET ... NX` of its lease (taken, or not, and nothing after
/// it in the pipeline arrives), the fill is the script naming the fills
/// channel (its announcement).
fn acquire(rig_key: &str) -> RequestCut {
    RequestCut::containing(b"NX").and(format!("{}:l", phys(rig_key)))
}

fn fill(rig_key: &str) -> RequestCut {
    RequestCut::containing(b"EVALSHA")
        .and(phys(rig_key))
        .and(b"aside:fills")
}

/// The Redis key of `key` in namespace NS (`Cache::physical_key`).
fn phys(key: &str) -> String {
    format!("{{{NS}:{key}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_script_ran_reply_lost() {
    load_cut(false, Cut::Ran.apply(acquire("k1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_script_never_arrived() {
    load_cut(false, Cut::Lost.apply(acquire("k1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_script_ran_reply_lost() {
    load_cut(false, Cut::Ran.apply(fill("k1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_script_never_arrived() {
    load_cut(false, Cut::Lost.apply(fill("k1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lease_script_ran_reply_lost() {
    load_cut(true, Cut::Ran.apply(acquire("k1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lease_script_never_arrived() {
    load_cut(true, Cut::Lost.apply(acquire("k1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_fill_script_ran_reply_lost() {
    load_cut(true, Cut::Ran.apply(fill("k1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_fill_script_never_arrived() {
    load_cut(true, Cut::Lost.apply(fill("k1"))).await;
}

/// What is invalidated.
#[derive(Debug, Clone, Copy)]
enum Target {
    Key,
    Tag,
    Namespace,
}

/// An invalidation by A whose `DEL` is cut: A gets `Queued`, reads the new
/// row (bypassing the cache) until the retry lands, and then B, which never
/// heard of it, reads the new row from Redis too.
async fn invalidation_cut(target: Target, how: Cut) {
    let rig = Rig::start().await;
    let opts = EntryOptions::new().tag("cat");
    let read_a = || async { read_tagged(&rig, &rig.a, &opts).await };
    assert_eq!(read_a().await, 1);
    assert_eq!(read_a().await, 1);
    assert_eq!(read_tagged(&rig, &rig.b, &opts).await, 1, "B reads it too");
    let token = match target {
        Target::Key => phys("k"),
        Target::Tag => format!("{{{NS}}}:t:cat"),
        Target::Namespace => format!("{{{NS}}}:n"),
    };
    rig.proxy
        .cut_request(how.apply(RequestCut::containing(b"\r\nDEL\r\n").and(&token)));
    rig.db.store(2, Ordering::SeqCst); // the database write
    let inv = match target {
        Target::Key => rig.a.invalidate("k").await,
        Target::Tag => rig.a.invalidate_tag("cat").await,
        Target::Namespace => rig.a.invalidate_namespace().await,
    };
    assert_eq!(
        inv.unwrap(),
        Invalidation::Queued,
        "a cut invalidation is queued"
    );
    assert_eq!(rig.proxy.requests_cut(), 1, "the DEL was cut");
    // The cut did what it says (the first retry is a second away): Redis
    // deleted the key, or never received the whole `DEL`.
    let mut raw = rig.raw().await;
    let there: bool = redis::cmd("EXISTS")
        .arg(&token)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(there, matches!(how, Cut::Lost), "{how:?}: {token} there");
    let deadline = Instant::now() + WITHIN + RETRY;
    while rig.a.pending_invalidations() > 0 {
        assert_eq!(read_a().await, 2, "A never reads the old row meanwhile");
        assert!(Instant::now() < deadline, "the invalidation never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        rig.a.stats().bypassed >= 1,
        "A bypassed the cache meanwhile"
    );
    assert_eq!(
        read_tagged(&rig, &rig.b, &opts).await,
        2,
        "applied in Redis"
    );
    assert_eq!(read_a().await, 2);
    let before = rig.a.stats().hits;
    assert_eq!(read_a().await, 2);
    assert!(rig.a.stats().hits > before, "A caches again");
}

async fn read_tagged(rig: &Rig, cache: &Cache, opts: &EntryOptions) -> u64 {
    cache
        .get_or_load_with("k", opts, rig.loader())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_invalidation_ran_reply_lost() {
    invalidation_cut(Target::Key, Cut::Ran).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_invalidation_never_arrived() {
    invalidation_cut(Target::Key, Cut::Lost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_ran_reply_lost() {
    invalidation_cut(Target::Tag, Cut::Ran).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_never_arrived() {
    invalidation_cut(Target::Tag, Cut::Lost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_invalidation_ran_reply_lost() {
    invalidation_cut(Target::Namespace, Cut::Ran).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_invalidation_never_arrived() {
    invalidation_cut(Target::Namespace, Cut::Lost).await;
}
