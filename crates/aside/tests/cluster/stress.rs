//! A random workload on caches sharing one backend: readers load rows (one
//! by one and in batches, each entry tagged with its row's group), writers
//! change rows and invalidate a key, a group's tag or the whole namespace.
//!
//! The source of truth is a version per row. A writer bumps the versions
//! of the rows it changes (the commit), invalidates, and once that returned
//! `Applied` raises those rows' floors. A reader notes its rows' floors
//! before its call; an answer below its floor is a stale read: data loaded
//! before an invalidation that had returned `Applied` before the read
//! began. Loaders read the version, then pause up to 10 ms, so that writes
//! land in the middle of loads all the time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use aside::{Cache, EntryOptions};
use aside_test::fixtures::DbDown;
use rand::Rng as _;

const ROWS: usize = 24;
const GROUPS: usize = 3;
const READERS: usize = 6;
const WRITERS: usize = 2;

struct Truth {
    version: Vec<AtomicI64>,
    floor: Vec<AtomicI64>,
}

impl Truth {
    async fn load(&self, row: usize) -> i64 {
        let v = self.version[row].load(Ordering::SeqCst);
        let pause = rand::rng().random_range(0..10);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        v
    }

    fn rows_of(group: usize) -> impl Iterator<Item = usize> {
        (0..ROWS).filter(move |r| r % GROUPS == group)
    }
}

fn row_key(row: usize) -> String {
    format!("row:{row}")
}

fn row_of(key: &str) -> usize {
    key.trim_start_matches("row:").parse().unwrap()
}

fn tag(group: usize) -> String {
    format!("group:{group}")
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub reads: u64,
    pub stale: Vec<String>,
    pub errors: Vec<String>,
    pub applied: u64,
    pub not_applied: u64,
    pub stale_fills_rejected: u64,
    pub hits: u64,
    /// Whether the `during` event finished before the workload did.
    pub during_finished_in_run: bool,
}

impl Report {
    /// No stale read, no error, and a run that means something.
    pub fn assert_sound(&self) {
        assert!(
            self.stale.is_empty(),
            "{} stale reads, e.g. {:?}",
            self.stale.len(),
            &self.stale[..self.stale.len().min(5)]
        );
        assert!(self.errors.is_empty(), "errors: {:?}", self.errors);
        assert!(self.reads > 200, "too few reads to mean anything: {self:?}");
        assert!(self.applied > 50, "too few invalidations: {self:?}");
        assert!(
            self.stale_fills_rejected > 0,
            "no load raced a write: {self:?}"
        );
        assert!(self.hits > 0, "{self:?}");
    }
}

#[derive(Default)]
struct Shared {
    stale: std::sync::Mutex<Vec<String>>,
    errors: std::sync::Mutex<Vec<String>>,
    applied: AtomicU64,
    not_applied: AtomicU64,
}

async fn reader(
    caches: Vec<Cache>,
    truth: Arc<Truth>,
    shared: Arc<Shared>,
    until: tokio::time::Instant,
) -> u64 {
    let mut reads = 0;
    while tokio::time::Instant::now() < until {
        let (cache, batch, rows) = {
            let mut rng = rand::rng();
            let cache = caches[rng.random_range(0..caches.len())].clone();
            let group = rng.random_range(0..GROUPS);
            let rows: Vec<usize> = Truth::rows_of(group).collect();
            let n = rng.random_range(1..5);
            let picked: Vec<usize> = (0..n)
                .map(|_| rows[rng.random_range(0..rows.len())])
                .collect();
            (cache, rng.random_bool(0.4), picked)
        };
        let opts = EntryOptions::new().tag(tag(rows[0] % GROUPS));
        let floors: Vec<i64> = rows
            .iter()
            .map(|&r| truth.floor[r].load(Ordering::SeqCst))
            .collect();
        let got: Result<Vec<Option<i64>>, aside::Error> = if batch {
            let t = Arc::clone(&truth);
            let keys: Vec<String> = rows.iter().map(|&r| row_key(r)).collect();
            cache
                .get_many_or_load_with(keys, &opts, move |keys: Vec<String>| async move {
                    let mut found = HashMap::new();
                    for k in keys {
                        let v = t.load(row_of(&k)).await;
                        found.insert(k, v);
                    }
                    Ok::<_, DbDown>(found)
                })
                .await
        } else {
            let row = rows[0];
            let t = Arc::clone(&truth);
            cache
                .get_or_load_with(row_key(row), &opts, move || async move {
                    Ok::<_, DbDown>(Some(t.load(row).await))
                })
                .await
                .map(|v| vec![v])
        };
        match got {
            Ok(values) => {
                for ((row, floor), v) in rows.iter().zip(floors).zip(values) {
                    match v {
                        Some(v) if v >= floor => {}
                        other => shared.stale.lock().unwrap().push(format!(
                            "row {row}: read {other:?} after the invalidation of version {floor} \
                             had returned Applied (batch: {batch})"
                        )),
                    }
                }
            }
            Err(e) => shared.errors.lock().unwrap().push(e.to_string()),
        }
        reads += 1;
    }
    reads
}

async fn writer(
    caches: Vec<Cache>,
    truth: Arc<Truth>,
    shared: Arc<Shared>,
    until: tokio::time::Instant,
) {
    while tokio::time::Instant::now() < until {
        let (cache, choice, row, pause) = {
            let mut rng = rand::rng();
            let cache = caches[rng.random_range(0..caches.len())].clone();
            (
                cache,
                rng.random_range(0..100),
                rng.random_range(0..ROWS),
                rng.random_range(0..4),
            )
        };
        let rows: Vec<usize> = match choice {
            0..60 => vec![row],
            60..95 => Truth::rows_of(row % GROUPS).collect(),
            _ => (0..ROWS).collect(),
        };
        let versions: Vec<i64> = rows
            .iter()
            .map(|&r| truth.version[r].fetch_add(1, Ordering::SeqCst) + 1)
            .collect();
        let outcome = match choice {
            0..60 => cache.invalidate(row_key(row)).await,
            60..95 => cache.invalidate_tag(tag(row % GROUPS)).await,
            _ => cache.invalidate_namespace().await,
        };
        match outcome {
            Ok(i) if i.is_applied() => {
                shared.applied.fetch_add(1, Ordering::Relaxed);
                for (&r, v) in rows.iter().zip(versions) {
                    truth.floor[r].fetch_max(v, Ordering::SeqCst);
                }
            }
            // Queued (the backend was unreachable): not covered by the
            // promise until it is applied; no floor is raised.
            Ok(_) => {
                shared.not_applied.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.errors.lock().unwrap().push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Runs the workload on `caches` for `run`; `during`, if any, runs (on a
/// blocking thread) a third of the way in.
pub async fn run(
    caches: &[Cache],
    run: Duration,
    during: Option<Box<dyn FnOnce() + Send>>,
) -> Report {
    let truth = Arc::new(Truth {
        version: (0..ROWS).map(|_| AtomicI64::new(1)).collect(),
        floor: (0..ROWS).map(|_| AtomicI64::new(0)).collect(),
    });
    let shared = Arc::new(Shared::default());
    let until = tokio::time::Instant::now() + run;
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            tokio::spawn(reader(
                caches.to_vec(),
                Arc::clone(&truth),
                Arc::clone(&shared),
                until,
            ))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(writer(
                caches.to_vec(),
                Arc::clone(&truth),
                Arc::clone(&shared),
                until,
            ))
        })
        .collect();
    let event = during.map(|f| {
        tokio::spawn(async move {
            tokio::time::sleep(run / 3).await;
            tokio::task::spawn_blocking(f).await.unwrap();
            tokio::time::Instant::now() < until
        })
    });
    let mut report = Report::default();
    for r in readers {
        report.reads += r.await.unwrap();
    }
    for w in writers {
        w.await.unwrap();
    }
    if let Some(e) = event {
        report.during_finished_in_run = e.await.unwrap();
    }
    for c in caches {
        let s = c.stats();
        report.stale_fills_rejected += s.stale_fills_rejected;
        report.hits += s.hits;
    }
    report.stale = std::mem::take(&mut shared.stale.lock().unwrap());
    report.errors = std::mem::take(&mut shared.errors.lock().unwrap());
    report.applied = shared.applied.load(Ordering::Relaxed);
    report.not_applied = shared.not_applied.load(Ordering::Relaxed);
    report
}
