//! Batches and single calls that register their loads at the very same
//! moment: every key is still loaded once, and batches asking for each
//! other's keys in opposite orders still finish.
//!
//! Each caller of a round runs on a thread of its own, all released by one
//! barrier, so that they really run at once and race between finding no
//! load of a key and registering their own. (Tasks released by a
//! `tokio::sync::Barrier` mostly run one after the other on the worker that
//! woke them, which hides the race.) Batches of hundreds of keys widen the
//! race: a batch looks for loads of all its keys, then registers its own
//! one by one. Many rounds with fresh keys make each interleaving likely to
//! happen at least once.
//!
//! Every round has a cache of its own, with a generous backend timeout: a
//! value evicted from a bounded cache, or a fill given up on a loaded
//! machine, is rightly loaded again by a later caller, which is not the
//! race under test.

use std::pin::Pin;

use super::*;

const ROUNDS: usize = 30;
/// Long enough that every caller of a round registers (or joins) its loads
/// before the first load finishes.
const LOAD: Duration = Duration::from_millis(5);

type Call<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn patient(b: aside::CacheBuilder) -> aside::CacheBuilder {
    b.backend_timeout(Duration::from_secs(10))
}

fn fresh_memory() -> Cache {
    patient(builder("b"))
        .backend(MemoryBackend::new())
        .build()
        .unwrap()
}

fn fresh_redis(redis: &RedisServer) -> Cache {
    let backend = RedisBackend::new(&redis.url()).unwrap();
    patient(builder("b")).backend(backend).build().unwrap()
}

fn fresh_tiered(redis: &RedisServer) -> Cache {
    let l2 = RedisBackend::new(&redis.url()).unwrap();
    let backend = TieredBackend::builder(l2).build().unwrap();
    patient(builder("b")).backend(backend).build().unwrap()
}

/// Runs every call on a thread of its own, all started together.
async fn at_once<T: Send + 'static>(calls: Vec<Call<T>>) -> Vec<T> {
    let barrier = Arc::new(std::sync::Barrier::new(calls.len()));
    let runtime = tokio::runtime::Handle::current();
    let threads: Vec<_> = calls
        .into_iter()
        .map(|call| {
            let (barrier, runtime) = (Arc::clone(&barrier), runtime.clone());
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                runtime.block_on(call)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in threads {
        out.push(t.await.unwrap());
    }
    out
}

fn round_keys(round: usize, ids: impl IntoIterator<Item = usize>) -> Vec<String> {
    ids.into_iter().map(|i| format!("r{round}:{i}")).collect()
}

fn values(keys: &[String]) -> Vec<Option<String>> {
    keys.iter().map(|k| Some(format!("v:{k}"))).collect()
}

/// Runs one batch per list of ids, all at once, and checks every answer.
async fn race_batches(cache: &Cache, calls: &Calls, round: usize, lists: &[Vec<usize>]) {
    type Answer = (Vec<String>, Result<Vec<Option<String>>, aside::Error>);
    let batches: Vec<Call<Answer>> = lists
        .iter()
        .map(|ids| {
            let (c, l) = (cache.clone(), loader(calls, LOAD));
            let keys = round_keys(round, ids.iter().copied());
            Box::pin(async move {
                let got = c.get_many_or_load::<_, String, _>(&keys, l).await;
                (keys, got)
            }) as Call<Answer>
        })
        .collect();
    for (keys, got) in at_once(batches).await {
        assert_eq!(got.unwrap(), values(&keys));
    }
}

fn assert_loaded_once(calls: &Calls, distinct: usize, round: usize, cache: &Cache) {
    let per_key = calls.per_key();
    assert_eq!(per_key.len(), distinct, "round {round}: {:?}", calls.all());
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "round {round}: loaded more than once: {twice:?}\n{:?}",
        cache.stats()
    );
}

/// Three batches of 800 keys overlapping two by two, started together:
/// each key loaded once.
async fn simultaneous_batches_load_each_key_once(fresh: &dyn Fn() -> Cache) {
    const N: usize = 400;
    for round in 0..ROUNDS {
        let (cache, calls) = (fresh(), Calls::default());
        let lists = [
            (0..2 * N).collect(),
            (N..3 * N).collect(),
            (2 * N..3 * N).chain(0..N).collect(),
        ];
        race_batches(&cache, &calls, round, &lists).await;
        assert_loaded_once(&calls, 3 * N, round, &cache);
    }
}

/// A batch of 400 keys, and a single `get_or_load` of each of its keys,
/// started together (the singles from one thread, last key first): each
/// key loaded once, whichever registers first.
async fn batch_and_singles_at_once_load_each_key_once(fresh: &dyn Fn() -> Cache) {
    const KEYS: usize = 400;
    for round in 0..ROUNDS {
        let (cache, calls) = (fresh(), Calls::default());
        let keys = round_keys(round, 0..KEYS);
        let (c, l, all) = (cache.clone(), loader(&calls, LOAD), keys.clone());
        let batch: Call<Vec<Option<String>>> =
            Box::pin(async move { c.get_many_or_load::<_, String, _>(&all, l).await.unwrap() });
        let singles = keys.iter().rev().map(|k| {
            let (c, rec, k, key) = (cache.clone(), calls.clone(), k.clone(), k.clone());
            async move {
                c.get_or_load(k, move || async move {
                    rec.record(std::slice::from_ref(&key));
                    tokio::time::sleep(LOAD).await;
                    Ok::<_, DbDown>(Some(format!("v:{key}")))
                })
                .await
                .unwrap()
            }
        });
        let singles: Call<Vec<Option<String>>> =
            Box::pin(futures_util::future::join_all(singles.collect::<Vec<_>>()));
        let got = at_once(vec![batch, singles]).await;
        assert_eq!(got[0], values(&keys));
        let mut reversed = values(&keys);
        reversed.reverse();
        assert_eq!(got[1], reversed);
        assert_loaded_once(&calls, KEYS, round, &cache);
    }
}

/// Batches that ask for shared keys in opposite orders ([1, 2] and [2, 1],
/// and a third across both), started together: each may find the other
/// loading a key it wants while it has registered loads of its own. None
/// may wait for the other's load before its own can start, or both would
/// wait for ever. A liveness check: the bound is generous, not a speed
/// claim.
async fn crossed_batches_finish(fresh: &dyn Fn() -> Cache) {
    let run = async {
        for round in 0..ROUNDS * 5 {
            let (cache, calls) = (fresh(), Calls::default());
            let lists = [vec![1, 2], vec![2, 1], vec![3, 2, 1]];
            race_batches(&cache, &calls, round, &lists).await;
            assert_loaded_once(&calls, 3, round, &cache);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("crossed batches waited for each other: a deadlock");
}

/// Every test on the three backends, with a cache of its own per round.
macro_rules! on_every_backend_fresh {
    ($($name:ident),* $(,)?) => {
        mod memory_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(&super::fresh_memory).await; })*
        }
        mod redis_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let redis = super::redis_server();
                super::$name(&|| super::fresh_redis(&redis)).await;
            })*
        }
        mod tiered_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let redis = super::redis_server();
                super::$name(&|| super::fresh_tiered(&redis)).await;
            })*
        }
    };
}

on_every_backend_fresh!(
    simultaneous_batches_load_each_key_once,
    batch_and_singles_at_once_load_each_key_once,
    crossed_batches_finish,
);
