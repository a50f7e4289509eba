//! `Cache::warm` and hot-key tracking on the memory backend and a real
//! redis-server: only misses are loaded, in bounded chunks with bounded
//! concurrency; a failing chunk does not stop the others; the hot keys of a
//! skewed workload, saved as JSON, warm a fresh instance.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::backend::{MemoryBackend, RedisBackend};
use aside::{Cache, HotKeys, WarmOptions, WarmProgress};
use aside_test::RedisServer;
use aside_test::fixtures::{DbDown, redis_server};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use rand_distr::{Distribution as _, Zipf};

fn builder(namespace: &str) -> aside::CacheBuilder {
    // Chunks of hundreds of keys on a machine shared with other builds: a
    // timed-out fill would leave keys unwarmed, which these tests do not
    // study.
    Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(60))
        .backend_timeout(Duration::from_secs(2))
}

fn memory() -> Cache {
    builder("w").backend(MemoryBackend::new()).build().unwrap()
}

fn on_redis(redis: &RedisServer, namespace: &str) -> Cache {
    let backend = RedisBackend::new(&redis.url()).unwrap();
    builder(namespace).backend(backend).build().unwrap()
}

fn key(i: usize) -> String {
    format!("k{i}")
}

/// What a batch loader saw: the keys of each call, and the most calls in
/// flight at once.
#[derive(Clone, Default)]
struct Probe {
    calls: Arc<Mutex<Vec<Vec<String>>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

type Loaded = Pin<Box<dyn Future<Output = Result<HashMap<String, String>, DbDown>> + Send>>;

impl Probe {
    /// A batch loader returning `v:<key>` after `delay`, failing any call
    /// that includes `poison`.
    fn loader(
        &self,
        delay: Duration,
        poison: Option<String>,
    ) -> impl Fn(Vec<String>) -> Loaded + Send + Sync + 'static {
        let probe = self.clone();
        move |keys: Vec<String>| {
            let probe = probe.clone();
            let poison = poison.clone();
            Box::pin(async move {
                let now = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                probe.max_in_flight.fetch_max(now, Ordering::SeqCst);
                probe.calls.lock().unwrap().push(keys.clone());
                tokio::time::sleep(delay).await;
                probe.in_flight.fetch_sub(1, Ordering::SeqCst);
                if poison.is_some_and(|p| keys.contains(&p)) {
                    return Err(DbDown);
                }
                Ok(keys
                    .into_iter()
                    .map(|k| (k.clone(), format!("v:{k}")))
                    .collect())
            })
        }
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }
}

/// Options recording every progress report.
fn recorded(options: WarmOptions) -> (WarmOptions, Arc<Mutex<Vec<WarmProgress>>>) {
    let seen: Arc<Mutex<Vec<WarmProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let options = options.on_progress(move |p| sink.lock().unwrap().push(p.clone()));
    (options, seen)
}

/// 1,000 keys, 300 of them cached (spread over every chunk): the loader
/// gets exactly the 700 misses, once each, in calls of at most the chunk
/// size, never more than `concurrency` at once; cached entries keep their
/// values; progress climbs to the total.
async fn only_misses_are_loaded_in_bounded_chunks(cache: &Cache) {
    let cached: Vec<(String, String)> = (0..1000)
        .filter(|i| i % 10 < 3)
        .map(|i| (key(i), "old".to_owned()))
        .collect();
    cache.set_many(cached).await.unwrap();
    let probe = Probe::default();
    let (options, seen) = recorded(WarmOptions::new().chunk_size(64).concurrency(3));
    let keys: Vec<String> = (0..1000).map(key).collect();
    let report = cache
        .warm(
            &keys,
            probe.loader(Duration::from_millis(20), None),
            &options,
        )
        .await
        .unwrap();

    let calls = probe.calls();
    let loaded: Vec<String> = calls.iter().flatten().cloned().collect();
    let distinct: HashSet<&String> = loaded.iter().collect();
    assert_eq!(loaded.len(), 700, "each miss loaded once");
    let misses: HashSet<String> = (0..1000).filter(|i| i % 10 >= 3).map(key).collect();
    assert_eq!(distinct, misses.iter().collect(), "only the misses loaded");
    assert!(
        calls.iter().all(|c| !c.is_empty() && c.len() <= 64),
        "call sizes: {:?}",
        calls.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let max = probe.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 3, "{max} loader calls at once");
    assert!(max >= 2, "the chunks never overlapped ({max})");

    assert_eq!((report.total, report.done), (1000, 1000));
    assert_eq!(
        (report.loaded, report.cached_already, report.failed),
        (700, 300, 0)
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.first().map(|p| p.done), Some(0));
    assert!(seen.windows(2).all(|w| w[0].done < w[1].done));
    assert_eq!(seen.last().map(|p| p.done), Some(1000));
    // Warm fills what is missing, and overwrites nothing.
    assert_eq!(
        cache.get::<String>("k0").await.unwrap().as_deref(),
        Some("old")
    );
    assert_eq!(
        cache.get::<String>("k5").await.unwrap().as_deref(),
        Some("v:k5")
    );

    // Everything is cached now: a second warm loads nothing.
    let again = Probe::default();
    let report = cache
        .warm(
            &keys,
            again.loader(Duration::ZERO, None),
            &WarmOptions::new(),
        )
        .await
        .unwrap();
    assert!(again.calls().is_empty());
    assert_eq!((report.cached_already, report.loaded), (1000, 0));
}

/// The chunk holding `k500` fails; the others load, and the report says
/// which share failed and why. A second warm loads just that chunk.
async fn a_failing_chunk_does_not_stop_the_others(cache: &Cache) {
    let probe = Probe::default();
    let keys: Vec<String> = (0..1000).map(key).collect();
    let options = WarmOptions::new().chunk_size(100).concurrency(4);
    let report = cache
        .warm(
            &keys,
            probe.loader(Duration::from_millis(5), Some(key(500))),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(probe.calls().len(), 10, "every chunk was tried");
    assert_eq!(
        (report.done, report.loaded, report.failed),
        (1000, 900, 100)
    );
    let error = report.first_error.expect("the loader's error");
    assert!(error.is_loader(), "{error:?}");
    assert_eq!(cache.get::<String>("k550").await.unwrap(), None);
    assert_eq!(
        cache.get::<String>("k650").await.unwrap().as_deref(),
        Some("v:k650")
    );

    let retry = Probe::default();
    let report = cache
        .warm(&keys, retry.loader(Duration::ZERO, None), &options)
        .await
        .unwrap();
    assert_eq!(retry.calls(), vec![(500..600).map(key).collect::<Vec<_>>()]);
    assert_eq!((report.loaded, report.cached_already), (100, 900));
}

/// A key invalidated while its chunk loads is not cached (its fill is
/// refused), and the report says so instead of counting it loaded.
async fn a_key_invalidated_during_its_load_is_reported(cache: &Cache) {
    let writer = cache.clone();
    let loader = move |keys: Vec<String>| {
        let writer = writer.clone();
        async move {
            // The row of k3 changes while the batch holds its old value.
            if keys.iter().any(|k| k == "k3") {
                writer.invalidate("k3").await.unwrap();
            }
            Ok::<_, DbDown>(
                keys.into_iter()
                    .map(|k| (k.clone(), format!("v:{k}")))
                    .collect::<HashMap<_, _>>(),
            )
        }
    };
    let keys: Vec<String> = (0..10).map(key).collect();
    let report = cache
        .warm(&keys, loader, &WarmOptions::new().chunk_size(5))
        .await
        .unwrap();
    assert_eq!((report.loaded, report.failed), (9, 1));
    assert!(report.first_error.is_some());
    assert_eq!(cache.get::<String>("k3").await.unwrap(), None);
}

#[tokio::test]
async fn memory_a_key_invalidated_during_its_load_is_reported() {
    a_key_invalidated_during_its_load_is_reported(&memory()).await;
}

#[tokio::test]
async fn redis_a_key_invalidated_during_its_load_is_reported() {
    let redis = redis_server();
    a_key_invalidated_during_its_load_is_reported(&on_redis(&redis, "w")).await;
}

/// Reads `reads` Zipf-distributed product keys through `get_or_load`;
/// returns the true read count of each key.
async fn zipf_reads(cache: &Cache, reads: usize, seed: u64) -> HashMap<String, u64> {
    let zipf = Zipf::new(1000.0, 1.1).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = HashMap::new();
    for _ in 0..reads {
        let id = zipf.sample(&mut rng) as u64;
        let k = format!("product:{id}");
        *truth.entry(k.clone()).or_insert(0) += 1;
        let v: Option<u64> = cache
            .get_or_load(k, move || async move { Ok::<_, DbDown>(Some(id)) })
            .await
            .unwrap();
        assert_eq!(v, Some(id));
    }
    truth
}

fn true_top(truth: &HashMap<String, u64>, n: usize) -> Vec<String> {
    let mut all: Vec<(&String, &u64)> = truth.iter().collect();
    all.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    all.into_iter().take(n).map(|(k, _)| k.clone()).collect()
}

/// Tracking finds the 10 most read keys of a skewed workload (counts never
/// below the truth); saved as JSON and loaded back, they warm a fresh
/// instance, where reading them is a hit without a load.
async fn hot_keys_warm_a_fresh_instance(old: &Cache, fresh: &Cache) {
    let truth = zipf_reads(old, 20_000, 7).await;
    let hot = old.hot_keys();
    assert_eq!(hot.len(), 20);
    let listed: HashSet<&str> = hot.keys().collect();
    for k in true_top(&truth, 10) {
        assert!(listed.contains(k.as_str()), "{k} missing from {hot:?}");
    }
    for (k, count) in hot.iter() {
        assert!(*count >= truth[k], "{k}: {count} < {}", truth[k]);
    }
    assert!(fresh.hot_keys().is_empty(), "tracking is off by default");

    let saved = hot.to_json();
    let back = HotKeys::from_json(&saved).unwrap();
    assert_eq!(back, hot);
    let report = fresh
        .warm(
            back.keys(),
            |keys: Vec<String>| async move {
                Ok::<_, DbDown>(
                    keys.into_iter()
                        .map(|k| {
                            let id = k["product:".len()..].parse::<u64>().unwrap();
                            (k, id)
                        })
                        .collect::<HashMap<String, u64>>(),
                )
            },
            &WarmOptions::new().chunk_size(7),
        )
        .await
        .unwrap();
    assert_eq!(report.loaded, 20);
    let before = fresh.stats();
    for k in back.keys() {
        let v: Option<u64> = fresh
            .get_or_load(k, || async { Err::<Option<u64>, _>(DbDown) })
            .await
            .unwrap();
        assert!(v.is_some(), "{k}");
    }
    let after = fresh.stats();
    assert_eq!(after.hits - before.hits, 20, "every warmed key is a hit");
    assert_eq!(after.loads, before.loads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_only_misses_are_loaded_in_bounded_chunks() {
    only_misses_are_loaded_in_bounded_chunks(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_only_misses_are_loaded_in_bounded_chunks() {
    let redis = redis_server();
    only_misses_are_loaded_in_bounded_chunks(&on_redis(&redis, "w")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_failing_chunk_does_not_stop_the_others() {
    a_failing_chunk_does_not_stop_the_others(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_failing_chunk_does_not_stop_the_others() {
    let redis = redis_server();
    a_failing_chunk_does_not_stop_the_others(&on_redis(&redis, "w")).await;
}

#[tokio::test]
async fn memory_hot_keys_warm_a_fresh_instance() {
    let old = builder("w")
        .track_hot_keys(20)
        .hot_key_sampling(1)
        .build()
        .unwrap();
    hot_keys_warm_a_fresh_instance(&old, &memory()).await;
}

#[tokio::test]
async fn redis_hot_keys_warm_a_fresh_instance() {
    let redis = redis_server();
    let backend = RedisBackend::new(&redis.url()).unwrap();
    let old = builder("old")
        .backend(backend)
        .track_hot_keys(20)
        .hot_key_sampling(1)
        .build()
        .unwrap();
    hot_keys_warm_a_fresh_instance(&old, &on_redis(&redis, "new")).await;
}

/// With the default sampling (1 read in 16), the hottest keys of a long
/// skewed run are still found.
#[tokio::test]
async fn sampled_tracking_finds_the_hottest_keys() {
    let cache = builder("w").track_hot_keys(20).build().unwrap();
    let truth = zipf_reads(&cache, 200_000, 11).await;
    let hot = cache.hot_keys();
    let listed: HashSet<&str> = hot.keys().collect();
    for k in true_top(&truth, 3) {
        assert!(listed.contains(k.as_str()), "{k} missing from {hot:?}");
    }
    let top = &hot[0];
    let real = truth[&top.0] as f64;
    assert!(
        (top.1 as f64 - real).abs() < real * 0.2,
        "{top:?} vs {real}"
    );
}

/// Batch reads count for tracking, key by key; warm does not.
#[tokio::test]
async fn batch_reads_count_and_warm_does_not() {
    let cache = builder("w")
        .track_hot_keys(4)
        .hot_key_sampling(1)
        .build()
        .unwrap();
    let probe = Probe::default();
    cache
        .warm(
            ["a", "b"],
            probe.loader(Duration::ZERO, None),
            &WarmOptions::new(),
        )
        .await
        .unwrap();
    assert!(cache.hot_keys().is_empty(), "{:?}", cache.hot_keys());
    let load = Probe::default().loader(Duration::ZERO, None);
    let _: Vec<Option<String>> = cache.get_many_or_load(["a", "b", "a"], load).await.unwrap();
    let _: Option<String> = cache.get("b").await.unwrap();
    assert_eq!(
        cache.hot_keys().into_vec(),
        [("a".to_owned(), 2), ("b".to_owned(), 2)]
    );
}

#[tokio::test]
async fn zero_chunks_are_refused() {
    let cache = memory();
    for options in [
        WarmOptions::new().chunk_size(0),
        WarmOptions::new().concurrency(0),
    ] {
        let e = cache
            .warm(
                ["a"],
                Probe::default().loader(Duration::ZERO, None),
                &options,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), aside::ErrorKind::Config);
    }
}
