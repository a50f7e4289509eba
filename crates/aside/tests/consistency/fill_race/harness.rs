//! The workload, shared by every cache under test.
//!
//! Writers commit `UPDATE rows SET version = version + 1` and then
//! invalidate (the key, or a tag or the namespace, as the target does it);
//! readers read through the cache with a loader that
//! reads the row and then waits a random 0-20 ms before handing the value to
//! the cache. That wait is the race window cache-aside is known for: a
//! writer can commit and invalidate between the loader's read and the
//! cache's write, and a cache that stores the value anyway keeps the old
//! version until the TTL (or the next write of that row).
//!
//! After the workload, every key's cached value is compared with its row.
//! During it, every read is checked too: a read that begins after the
//! invalidation of version `v` of its row has returned must not return an
//! older version. The final comparison only sees what survived the last
//! writes, which with tag or namespace invalidation is hardly anything (a
//! write makes a quarter, or all, of the entries unreadable); the check of
//! each read catches a fill that lost the race at any point of the run.
//!
//! The same generator (same seeds, same operations per task) drives aside
//! and the naive implementations, through the [`Target`] trait: the only
//! difference between a run that must find no stale entry and one that
//! must find some is the cache.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sqlx::PgPool;
use tokio::task::JoinSet;

use super::pg::Schema;

/// What the tasks do. Hot rows concentrate writes and reads on a few keys,
/// so that loads and invalidations of the same key overlap often.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub rows: i32,
    pub hot_rows: i32,
    /// Share of operations on the hot rows (ids `1..=hot_rows`).
    pub hot_share: f64,
    pub writers: usize,
    pub readers: usize,
    pub duration: Duration,
    /// The loader waits `0..=max_load_delay` after reading its row.
    pub max_load_delay: Duration,
    /// A writer pauses `0..=max_write_pause` between writes, so that readers
    /// get to load between two invalidations of a hot row.
    pub max_write_pause: Duration,
}

/// One loader call: read the row, then wait before returning it.
#[derive(Debug)]
pub struct Load {
    pool: PgPool,
    id: i32,
    delay: Duration,
    calls: Arc<AtomicU64>,
}

impl Load {
    /// `SELECT version`, then the injected delay: the value returned is the
    /// one read, however many writes commit during the delay.
    pub async fn run(self) -> Result<Option<i64>, sqlx::Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM rows WHERE id = $1")
            .bind(self.id)
            .fetch_optional(&self.pool)
            .await?;
        // The connection is back in the pool: only the race window remains.
        tokio::time::sleep(self.delay).await;
        Ok(version)
    }
}

/// A cache under test: how it reads through a loader, invalidates, and
/// shows what it holds.
pub trait Target: Send + Sync + 'static {
    /// Cache-aside read: the cached version, or `load` run and (maybe) cached.
    fn read(&self, id: i32, load: Load) -> impl Future<Output = Option<i64>> + Send;
    /// Called after the write of row `id` committed.
    fn invalidate(&self, id: i32) -> impl Future<Output = ()> + Send;
    /// What the cache holds for `id` now, without loading.
    fn cached(&self, id: i32) -> impl Future<Output = Option<i64>> + Send;
    /// Waits for work the cache still has to do after its callers returned
    /// (aside: queued invalidations).
    fn settle(&self) -> impl Future<Output = ()> + Send;
}

/// A cached version that differs from its row after the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    pub id: i32,
    pub cached: i64,
    pub row: i64,
}

/// What one run did and found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub reads: u64,
    pub writes: u64,
    pub loads: u64,
    /// Keys with a cached entry after the workload.
    pub cached: usize,
    pub stale: Vec<Stale>,
    /// Reads that began after the invalidation of a version of their row had
    /// returned, and returned an older version: the cache served what it
    /// should have dropped. (A read between a commit and its invalidation
    /// may return the old version with any cache; those are not counted.)
    pub stale_reads: u64,
}

/// Runs `w` against `target` on `schema`, with `fault` running alongside
/// (it starts with the workload; `async {}` for none), then compares every
/// cached entry with its row.
pub async fn run<T: Target>(
    target: &Arc<T>,
    schema: &Schema,
    w: Workload,
    seed: u64,
    fault: impl Future<Output = ()>,
) -> Report {
    let calls = Arc::new(AtomicU64::new(0));
    // By id (index 0 unused): the newest version whose invalidation has
    // returned. Rows are seeded at version 1, which needs none.
    let invalidated: Arc<Vec<AtomicI64>> =
        Arc::new((0..=w.rows).map(|_| AtomicI64::new(1)).collect());
    let deadline = Instant::now() + w.duration;
    let mut tasks = JoinSet::new();
    for task in 0..w.writers + w.readers {
        let (target, pool, calls) = (Arc::clone(target), schema.pool().clone(), calls.clone());
        let invalidated = Arc::clone(&invalidated);
        // One seeded stream per task: the same operations for every target.
        let mut rng = StdRng::seed_from_u64(seed << 16 | task as u64);
        let writer = task < w.writers;
        tasks.spawn(async move {
            let (mut done, mut stale_reads) = (0u64, 0u64);
            while Instant::now() < deadline {
                let id = pick(&mut rng, &w);
                let slot = &invalidated[usize::try_from(id).unwrap()];
                if writer {
                    let pause = upto(&mut rng, w.max_write_pause);
                    let version: i64 = sqlx::query_scalar(
                        "UPDATE rows SET version = version + 1 WHERE id = $1 RETURNING version",
                    )
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("UPDATE of row {id}: {e}"));
                    // Autocommit: the new version is committed here, before
                    // the invalidation, as a service would do it.
                    target.invalidate(id).await;
                    slot.fetch_max(version, Ordering::SeqCst);
                    tokio::time::sleep(pause).await;
                } else {
                    let delay = upto(&mut rng, w.max_load_delay);
                    let load = Load {
                        pool: pool.clone(),
                        id,
                        delay,
                        calls: calls.clone(),
                    };
                    // Read before the read starts: any version the read may
                    // return must be at least this one.
                    let floor = slot.load(Ordering::SeqCst);
                    if target.read(id, load).await.is_some_and(|v| v < floor) {
                        stale_reads += 1;
                    }
                }
                done += 1;
                // A hit in process completes without ever yielding: without
                // this, a reader on a run of hits would keep a worker thread
                // from the writers.
                tokio::task::yield_now().await;
            }
            (writer, done, stale_reads)
        });
    }
    let workers = async {
        let (mut reads, mut writes, mut stale_reads) = (0, 0, 0);
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((true, n, _)) => writes += n,
                Ok((false, n, stale)) => {
                    reads += n;
                    stale_reads += stale;
                }
                // A task's panic (a failed query, a cache error) is the test's.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("a workload task was cancelled: {e}"),
            }
        }
        (reads, writes, stale_reads)
    };
    let ((reads, writes, stale_reads), ()) = tokio::join!(workers, fault);

    // Every caller has returned, so every write committed and its
    // invalidation was applied or queued. Let the cache finish what it
    // queued, and give loads that outlived their callers (a load runs in its
    // own task) time to store or be dropped.
    target.settle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    target.settle().await;

    let mut report = Report {
        reads,
        writes,
        loads: calls.load(Ordering::Relaxed),
        stale_reads,
        ..Report::default()
    };
    for (id, row) in schema.versions().await {
        if let Some(cached) = target.cached(id).await {
            report.cached += 1;
            if cached != row {
                report.stale.push(Stale { id, cached, row });
            }
        }
    }
    report
}

fn pick(rng: &mut StdRng, w: &Workload) -> i32 {
    if rng.random_bool(w.hot_share) {
        rng.random_range(1..=w.hot_rows)
    } else {
        rng.random_range(1..=w.rows)
    }
}

fn upto(rng: &mut StdRng, max: Duration) -> Duration {
    let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.random_range(0..=max_us))
}
