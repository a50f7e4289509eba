//! The consistency promise under a random workload, read through batches
//! and single calls at once: once an invalidation of a row returned
//! `Applied`, no read that begins afterwards returns an older version.
//!
//! The source of truth is a version counter per row. A writer bumps it (the
//! commit), then invalidates the row's key and, once that returned
//! `Applied`, raises the row's floor. A reader notes the floors of its rows
//! before its call and checks every answer against them. Loaders read the
//! version, then wait up to 10 ms before returning it, so that writes land
//! in the middle of loads all the time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rand::Rng as _;

use super::*;

const ROWS: usize = 12;
const READERS: usize = 6;
const WRITERS: usize = 2;
const RUN: Duration = Duration::from_millis(1500);

#[derive(Default)]
struct Truth {
    version: Vec<AtomicI64>,
    floor: Vec<AtomicI64>,
    loads: AtomicU64,
}

impl Truth {
    fn new() -> Arc<Self> {
        Arc::new(Truth {
            version: (0..ROWS).map(|_| AtomicI64::new(1)).collect(),
            floor: (0..ROWS).map(|_| AtomicI64::new(0)).collect(),
            loads: AtomicU64::new(0),
        })
    }

    async fn load(&self, row: usize) -> i64 {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let v = self.version[row].load(Ordering::SeqCst);
        let pause = rand::rng().random_range(0..10);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        v
    }
}

fn row_key(row: usize) -> String {
    format!("row:{row}")
}

fn row_of(key: &str) -> usize {
    key.trim_start_matches("row:").parse().unwrap()
}

async fn reader(cache: Cache, truth: Arc<Truth>, until: tokio::time::Instant) -> u64 {
    let mut reads = 0;
    while tokio::time::Instant::now() < until {
        let (batch, rows): (bool, Vec<usize>) = {
            let mut rng = rand::rng();
            let n = rng.random_range(1..5);
            (
                rng.random_bool(0.7),
                (0..n).map(|_| rng.random_range(0..ROWS)).collect(),
            )
        };
        let floors: Vec<i64> = rows
            .iter()
            .map(|&r| truth.floor[r].load(Ordering::SeqCst))
            .collect();
        let got: Vec<i64> = if batch {
            let t = Arc::clone(&truth);
            let keys: Vec<String> = rows.iter().map(|&r| row_key(r)).collect();
            cache
                .get_many_or_load(keys, move |keys| async move {
                    let mut found = HashMap::new();
                    for k in keys {
                        let v = t.load(row_of(&k)).await;
                        found.insert(k, v);
                    }
                    Ok::<_, DbDown>(found)
                })
                .await
                .unwrap()
                .into_iter()
                .map(Option::unwrap)
                .collect()
        } else {
            let row = rows[0];
            let t = Arc::clone(&truth);
            let v = cache
                .get_or_load(row_key(row), move || async move {
                    Ok::<_, DbDown>(Some(t.load(row).await))
                })
                .await
                .unwrap()
                .unwrap();
            vec![v]
        };
        for ((row, floor), v) in rows.iter().zip(floors).zip(got) {
            assert!(
                v >= floor,
                "row {row}: read version {v}, but the invalidation of version {floor} had \
                 returned Applied before the read began (batch: {batch})"
            );
        }
        reads += 1;
    }
    reads
}

async fn writer(cache: Cache, truth: Arc<Truth>, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until {
        let (row, pause) = {
            let mut rng = rand::rng();
            // Half the writes on two hot rows.
            let row = if rng.random_bool(0.5) {
                rng.random_range(0..2)
            } else {
                rng.random_range(0..ROWS)
            };
            (row, rng.random_range(0..4))
        };
        let v = truth.version[row].fetch_add(1, Ordering::SeqCst) + 1;
        assert!(cache.invalidate(row_key(row)).await.unwrap().is_applied());
        truth.floor[row].fetch_max(v, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn workload(cache: Cache) {
    let truth = Truth::new();
    let until = tokio::time::Instant::now() + RUN;
    let readers: Vec<_> = (0..READERS)
        .map(|_| tokio::spawn(reader(cache.clone(), Arc::clone(&truth), until)))
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| tokio::spawn(writer(cache.clone(), Arc::clone(&truth), until)))
        .collect();
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    for w in writers {
        w.await.unwrap();
    }
    let s = cache.stats();
    assert!(reads > 100, "too few reads to mean anything: {reads}");
    assert!(s.stale_fills_rejected > 0, "no load raced a write: {s:?}");
    assert!(s.hits > 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promise_holds_on_memory() {
    workload(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promise_holds_on_redis() {
    let redis = redis_server();
    workload(on_redis(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promise_holds_on_tiered() {
    let redis = redis_server();
    workload(tiered(&redis)).await;
}
