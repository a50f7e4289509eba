//! Attacks on the joins of loads in flight: a caller that joins a load
//! before reading the backend must end where a caller that read first
//! would have, never waiting for (or failing with) a load it did not need.

use std::sync::Arc;
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, EntryOptions};
use aside_test::RedisServer;
use aside_test::fixtures::{DbError, redis_server};
use tokio::sync::Notify;

fn cache(redis: &RedisServer, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .backend_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A caller whose key is cached for it (an untagged entry, read untagged)
/// must get it at once, even while a caller that asked for a tag the entry
/// lacks is loading the key: that load is not this caller's miss. Joined
/// blind, the untagged caller waits for the load and gets its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_not_held_by_a_load_of_the_key_with_other_tags() {
    let redis = redis_server();
    let cache = cache(&redis, "rvc1");
    let tagged = EntryOptions::new().tag("t");
    let rounds = 40;
    let mut failed: Vec<String> = Vec::new();
    for round in 0..rounds {
        let key = format!("k{round}");
        let v: Option<String> = cache
            .get_or_load(&key, || async {
                Ok::<_, DbError>(Some("cached".to_owned()))
            })
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("cached"));

        // A tagged caller misses (the entry lacks the tag) and loads; its
        // loader is held, then fails.
        let gate = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (c, k, g, s, o) = (
            cache.clone(),
            key.clone(),
            gate.clone(),
            started.clone(),
            tagged.clone(),
        );
        let loading = tokio::spawn(async move {
            c.get_or_load_with(&k, &o, move || async move {
                s.notify_one();
                g.notified().await;
                Err::<Option<String>, _>(DbError)
            })
            .await
        });
        started.notified().await;

        let coalesced = cache.stats().joined;
        let (c, k) = (cache.clone(), key.clone());
        let reader = tokio::spawn(async move {
            c.get_or_load(&k, || async {
                Ok::<_, DbError>(Some("reloaded".to_owned()))
            })
            .await
        });
        // Wait (bounded) until the reader either answered or joined.
        for _ in 0..2_500 {
            if reader.is_finished() || cache.stats().joined > coalesced {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gate.notify_one();
        assert!(loading.await.unwrap().is_err());
        let seen: Result<Option<String>, aside::Error> = reader.await.unwrap();
        if seen.as_ref().ok().and_then(|v| v.as_deref()) != Some("cached") {
            failed.push(format!("round {round}: the untagged reader saw {seen:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {rounds} untagged reads of a cached key waited for a tagged load and failed: {failed:#?}",
        failed.len()
    );
}

/// A batch that waits (step 2 of its joins) for a single load of `z` while
/// holding its unstarted load of `a`, and that single load's loader reads
/// `a` through the cache (a value built from another: an acyclic
/// dependency `z -> a`). Before the ordered joins, the batch never waited
/// while leading; now `z`'s loader waits for the batch, which waits for
/// `z`, until the loader's hard timeout fails both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_on_a_load_whose_loader_reads_one_of_its_keys_does_not_stall() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("rvc2")
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .backend_timeout(Duration::from_secs(5))
        .loader_hard_timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let rounds = 30;
    let mut stalled: Vec<String> = Vec::new();
    for round in 0..rounds {
        let (a, z) = (format!("{round}:a"), format!("{round}:z"));
        // `z` first, so the batch's first look at it comes first; fillers
        // between `a` and `z` in the join order widen the window.
        let mut keys = vec![z.clone(), a.clone()];
        keys.extend((0..3_000).map(|i| format!("{round}:m{i:04}")));
        let misses = cache.stats().misses;
        let (c, ks) = (cache.clone(), keys.clone());
        let batch = tokio::spawn(async move {
            c.get_many_or_load(ks, |asked: Vec<String>| async move {
                Ok::<_, DbError>(asked.into_iter().map(|k| (k.clone(), k)).collect())
            })
            .await
        });
        // The batch counts its misses right before it joins: start the
        // single load then, so that it registers `z` during the joins.
        let (c, s) = (cache.clone(), std::time::Instant::now());
        let spin = tokio::task::spawn_blocking(move || {
            while c.stats().misses < misses + 3_000 && s.elapsed() < Duration::from_secs(5) {
                std::hint::spin_loop();
            }
        });
        spin.await.unwrap();
        let (c, za) = (cache.clone(), a.clone());
        let single = tokio::spawn(async move {
            let inner = c.clone();
            c.get_or_load(&z, move || async move {
                let a: Option<String> = inner
                    .get_or_load(&za, || async {
                        Ok::<_, DbError>(Some("single".to_owned()))
                    })
                    .await
                    .map_err(|_| DbError)?;
                Ok::<_, DbError>(a.map(|a| format!("from {a}")))
            })
            .await
        });
        let began = std::time::Instant::now();
        let (b, s) = (batch.await.unwrap(), single.await.unwrap());
        if b.is_err() || s.is_err() || began.elapsed() > Duration::from_millis(1_500) {
            stalled.push(format!(
                "round {round}: after {:?}, batch ok: {}, single: {s:?}",
                began.elapsed(),
                b.is_ok()
            ));
        }
    }
    assert!(
        stalled.is_empty(),
        "{} of {rounds} rounds stalled until the loader's hard timeout: {stalled:#?}",
        stalled.len()
    );
}

/// Another process writes the key (`set`) while this process's load of it
/// runs; a caller that begins after the write joins that load before
/// reading. When the load fails, its error is not this caller's: the cache
/// holds the written value, which a caller that read first would have got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_a_write_does_not_take_the_error_of_an_older_load() {
    let redis = redis_server();
    let (a, b) = (cache(&redis, "rvc3"), cache(&redis, "rvc3"));
    let rounds = 20;
    let mut failed: Vec<String> = Vec::new();
    for round in 0..rounds {
        let key = format!("k{round}");
        let gate = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (c, k, g, s) = (a.clone(), key.clone(), gate.clone(), started.clone());
        let loading = tokio::spawn(async move {
            c.get_or_load(&k, move || async move {
                s.notify_one();
                g.notified().await;
                Err::<Option<String>, _>(DbError)
            })
            .await
        });
        started.notified().await;
        b.set(&key, "written".to_owned()).await.unwrap();

        let coalesced = a.stats().joined;
        let (c, k) = (a.clone(), key.clone());
        let reader = tokio::spawn(async move {
            c.get_or_load(&k, || async {
                Ok::<_, DbError>(Some("reloaded".to_owned()))
            })
            .await
        });
        for _ in 0..2_500 {
            if reader.is_finished() || a.stats().joined > coalesced {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gate.notify_one();
        assert!(loading.await.unwrap().is_err());
        let seen: Result<Option<String>, aside::Error> = reader.await.unwrap();
        if seen.as_ref().ok().and_then(|v| v.as_deref()) != Some("written") {
            failed.push(format!(
                "round {round}: a caller after the write saw {seen:?}"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {rounds} callers that began after a write took an older load's error: {failed:#?}",
        failed.len()
    );
}

/// The other side of the previous test: callers of a cold key that joined
/// a failing load before reading find nothing cached and take its error,
/// without calling the loader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_of_a_failing_load_of_a_cold_key_take_its_error_and_load_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let redis = redis_server();
    let cache = cache(&redis, "rvc4");
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let spawn = |held: bool| {
        let (c, n, g, s) = (cache.clone(), calls.clone(), gate.clone(), started.clone());
        tokio::spawn(async move {
            c.get_or_load("k", move || async move {
                n.fetch_add(1, Ordering::SeqCst);
                if held {
                    s.notify_one();
                    g.notified().await;
                }
                Err::<Option<String>, _>(DbError)
            })
            .await
        })
    };
    let leader = spawn(true);
    started.notified().await;
    let joiners: Vec<_> = (0..50).map(|_| spawn(false)).collect();
    for _ in 0..2_500 {
        if cache.stats().joined >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(cache.stats().joined, 50, "{:?}", cache.stats());
    gate.notify_one();
    assert!(leader.await.unwrap().is_err());
    for j in joiners {
        let e = j.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), aside::ErrorKind::Loader);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the loader was called again"
    );
    assert_eq!(cache.stats().misses, 51, "{:?}", cache.stats());
}

/// Readers on one instance (single calls that join loads before reading,
/// and batches) while another instance (another process) writes the source
/// of truth and invalidates: no read that began after an `Applied`
/// invalidation returns a value loaded before it. (With joiners that take
/// any outcome, the proof rule skipped, it counts dozens of stale reads.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_joiner_reads_a_value_older_than_an_invalidation_it_followed() {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    const KEYS: usize = 4;
    let redis = redis_server();
    let (a, b) = (cache(&redis, "rvc5"), cache(&redis, "rvc5"));
    let version: Arc<Vec<AtomicI64>> = Arc::new((0..KEYS).map(|_| AtomicI64::new(1)).collect());
    // The newest version whose invalidation returned Applied, per key.
    let floor: Arc<Vec<AtomicI64>> = Arc::new((0..KEYS).map(|_| AtomicI64::new(0)).collect());
    let stale = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let load = |version: Arc<Vec<AtomicI64>>, k: usize| async move {
        let v = version[k].load(Ordering::SeqCst);
        // Long enough for invalidations, and callers after them, to land
        // while it runs.
        tokio::time::sleep(Duration::from_millis(3)).await;
        Ok::<_, DbError>(Some(v))
    };
    let mut tasks = Vec::new();
    for r in 0..8usize {
        let (a, version, floor, stale, reads) = (
            a.clone(),
            version.clone(),
            floor.clone(),
            stale.clone(),
            reads.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = r;
            while tokio::time::Instant::now() < until {
                n += 1;
                if r % 4 == 3 {
                    let floors: Vec<i64> =
                        (0..KEYS).map(|k| floor[k].load(Ordering::SeqCst)).collect();
                    let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
                    let v2 = version.clone();
                    let got: Vec<Option<i64>> = a
                        .get_many_or_load(keys, move |asked: Vec<String>| async move {
                            tokio::time::sleep(Duration::from_millis(3)).await;
                            Ok::<_, DbError>(
                                asked
                                    .into_iter()
                                    .map(|k| {
                                        let i: usize = k[1..].parse().unwrap();
                                        (k, v2[i].load(Ordering::SeqCst))
                                    })
                                    .collect(),
                            )
                        })
                        .await
                        .unwrap();
                    for (k, v) in got.into_iter().enumerate() {
                        reads.fetch_add(1, Ordering::Relaxed);
                        if v.unwrap() < floors[k] {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    let k = n % KEYS;
                    let at_start = floor[k].load(Ordering::SeqCst);
                    let v: Option<i64> = a
                        .get_or_load(format!("k{k}"), {
                            let version = version.clone();
                            move || load(version, k)
                        })
                        .await
                        .unwrap();
                    reads.fetch_add(1, Ordering::Relaxed);
                    if v.unwrap() < at_start {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let writer = {
        let (version, floor) = (version.clone(), floor.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while tokio::time::Instant::now() < until {
                n += 1;
                let k = n % KEYS;
                let v = version[k].fetch_add(1, Ordering::SeqCst) + 1;
                if b.invalidate(format!("k{k}")).await.unwrap().is_applied() {
                    floor[k].fetch_max(v, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_micros(rand_micros() / 3)).await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    writer.await.unwrap();
    let s = a.stats();
    assert!(reads.load(Ordering::Relaxed) > 500, "too few reads");
    assert!(s.joined > 0 && s.stale_fills_rejected > 0, "{s:?}");
    assert_eq!(stale.load(Ordering::Relaxed), 0, "stale reads; {s:?}");
}

fn rand_micros() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos % 3_000)
}
