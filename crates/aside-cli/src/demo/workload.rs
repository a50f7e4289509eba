//! The workload: tasks reading and writing Zipf-distributed product ids for a
//! fixed time, through an aside cache, through naive cache-aside, or straight
//! against the database, with the same stale-read detection for all three.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aside::{Cache, Key};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, Zipf};
use tokio::task::JoinSet;

use super::db::{Db, Product, to_i64};
use super::naive::Naive;

/// What to run; identical for every run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rows: u64,
    pub duration: Duration,
    pub concurrency: usize,
    pub write_share: f64,
    pub zipf: f64,
    pub seed: u64,
    /// How long every database read waits after its `SELECT` before handing
    /// the row over (see [`read_row`]).
    pub load_delay: Duration,
}

/// Where reads go.
#[derive(Debug, Clone)]
pub enum Reads {
    /// `cache.get_or_load`, loading from the database on a miss; writes
    /// invalidate.
    Cached(Cache),
    /// Naive cache-aside: get, on a miss load and set; writes delete.
    Naive(Naive),
    /// Straight to the database.
    Direct,
}

/// Per product id (index `id - 1`), the newest version known to have
/// committed, and the newest version whose cache invalidation has finished.
#[derive(Debug)]
pub struct Versions {
    committed: Vec<AtomicU64>,
    invalidated: Vec<AtomicU64>,
}

impl Versions {
    /// Every row starts at version 1, committed and (trivially) invalidated.
    pub fn new(rows: u64) -> Self {
        let all_ones = || (0..rows).map(|_| AtomicU64::new(1)).collect();
        Versions {
            committed: all_ones(),
            invalidated: all_ones(),
        }
    }

    fn committed(&self, id: u64) -> &AtomicU64 {
        slot(&self.committed, id)
    }

    fn invalidated(&self, id: u64) -> &AtomicU64 {
        slot(&self.invalidated, id)
    }
}

fn slot(v: &[AtomicU64], id: u64) -> &AtomicU64 {
    // `id` is in 1..=rows by construction; fall back to the first slot rather
    // than panic.
    let i = usize::try_from(id.saturating_sub(1)).unwrap_or(0);
    v.get(i).unwrap_or(&v[0])
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    pub reads: u64,
    pub writes: u64,
    /// Reads that reached the database: loader calls, or every direct read.
    pub db_queries: u64,
    pub loader_calls: Option<u64>,
    /// Share of reads answered from the cache; `None` with no cache.
    pub hit_ratio: Option<f64>,
    /// Reads that returned a version older than one committed before the read
    /// began.
    pub stale: u64,
    /// Of those, reads that began after that write's invalidation had
    /// finished: the cache kept an old value past its invalidation (a load
    /// that read the old row stored it after the delete).
    pub stale_after_invalidation: u64,
    pub invalidate_errors: u64,
    /// Read latency in microseconds.
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn ops(&self) -> u64 {
        self.reads + self.writes
    }
}

#[derive(Debug)]
struct Tally {
    reads: u64,
    writes: u64,
    direct_queries: u64,
    /// Naive cache-aside only (aside counts its own).
    naive_hits: u64,
    stale: u64,
    stale_after_invalidation: u64,
    invalidate_errors: u64,
    latency: Histogram<u64>,
}

/// What every task shares.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    zipf: Zipf<f64>,
    db: Db,
    reads: Reads,
    versions: Arc<Versions>,
    loader_calls: Arc<AtomicU64>,
    ops: AtomicU64,
    stop: AtomicBool,
}

/// Runs `plan` with `plan.concurrency` tasks until `plan.duration` has passed,
/// advancing `bar` (its length is the duration in milliseconds).
pub async fn run(
    plan: Plan,
    db: &Db,
    reads: Reads,
    versions: &Arc<Versions>,
    bar: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let zipf = Zipf::new(plan.rows as f64, plan.zipf).context("invalid Zipf parameters")?;
    let shared = Arc::new(Shared {
        plan,
        zipf,
        db: db.clone(),
        reads,
        versions: Arc::clone(versions),
        loader_calls: Arc::new(AtomicU64::new(0)),
        ops: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut tasks = JoinSet::new();
    for task in 0..plan.concurrency {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let result = worker(&shared, task as u64, deadline).await;
            if result.is_err() {
                shared.stop.store(true, Ordering::SeqCst);
            }
            result
        });
    }

    let mut tallies = Vec::with_capacity(plan.concurrency);
    let mut first_error = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(tally))) => tallies.push(tally),
                Some(Ok(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Some(Err(e)) => {
                    first_error.get_or_insert(
                        anyhow::Error::new(e).context("a workload task failed"),
                    );
                }
            },
            _ = tick.tick() => {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                bar.set_position(ms.min(bar.length().unwrap_or(ms)));
                bar.set_message(format!("{} ops", shared.ops.load(Ordering::Relaxed)));
            }
        }
    }
    let elapsed = started.elapsed();
    bar.set_message(format!("{} ops", shared.ops.load(Ordering::Relaxed)));
    bar.finish();
    if let Some(e) = first_error {
        return Err(e);
    }

    let mut latency = new_histogram()?;
    for t in &tallies {
        latency
            .add(&t.latency)
            .context("could not merge latency histograms")?;
    }
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let reads = sum(|t| t.reads);
    let (loader_calls, hit_ratio) = match &shared.reads {
        Reads::Cached(cache) => (
            Some(shared.loader_calls.load(Ordering::SeqCst)),
            Some(cache.stats().hit_ratio()),
        ),
        Reads::Naive(_) => (
            Some(shared.loader_calls.load(Ordering::SeqCst)),
            Some(ratio(sum(|t| t.naive_hits), reads)),
        ),
        Reads::Direct => (None, None),
    };
    Ok(Outcome {
        reads,
        writes: sum(|t| t.writes),
        db_queries: sum(|t| t.direct_queries) + loader_calls.unwrap_or(0),
        loader_calls,
        hit_ratio,
        stale: sum(|t| t.stale),
        stale_after_invalidation: sum(|t| t.stale_after_invalidation),
        invalidate_errors: sum(|t| t.invalidate_errors),
        latency,
        elapsed,
    })
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("could not create a latency histogram")
}

fn key(id: u64) -> Key {
    Key::new("product").part(id)
}

/// One task: operations until the deadline (or until another task failed).
async fn worker(s: &Shared, task: u64, deadline: Instant) -> anyhow::Result<Tally> {
    // One stream per task, the same in both runs.
    let mut rng = StdRng::seed_from_u64(s.plan.seed ^ task.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut t = Tally {
        reads: 0,
        writes: 0,
        direct_queries: 0,
        naive_hits: 0,
        stale: 0,
        stale_after_invalidation: 0,
        invalidate_errors: 0,
        latency: new_histogram()?,
    };
    while Instant::now() < deadline && !s.stop.load(Ordering::Relaxed) {
        // Zipf samples lie in 1..=rows; rank 1 is the hottest product.
        let id = (s.zipf.sample(&mut rng) as u64).clamp(1, s.plan.rows);
        if rng.random::<f64>() < s.plan.write_share {
            let price = rng.random_range(100..100_000);
            write(s, &mut t, id, price).await?;
        } else {
            read(s, &mut t, id).await?;
        }
        s.ops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(t)
}

/// `UPDATE`, record the committed version, invalidate, record that too.
async fn write(s: &Shared, t: &mut Tally, id: u64, price: i64) -> anyhow::Result<()> {
    let Some(version) = s.db.update_price(to_i64(id), price).await? else {
        anyhow::bail!("product {id} vanished from the database");
    };
    let version = u64::try_from(version).unwrap_or(0);
    s.versions
        .committed(id)
        .fetch_max(version, Ordering::SeqCst);
    t.writes += 1;
    match &s.reads {
        Reads::Cached(cache) => {
            if let Err(e) = cache.invalidate(key(id)).await {
                // The entry may still be cached: its reads may be stale until
                // the TTL. Counted and reported, not fatal.
                t.invalidate_errors += 1;
                tracing::debug!(id, error = %e, "invalidate failed");
                return Ok(());
            }
        }
        Reads::Naive(naive) => naive.delete(id).await?,
        Reads::Direct => {}
    }
    s.versions
        .invalidated(id)
        .fetch_max(version, Ordering::SeqCst);
    Ok(())
}

/// A read, timed, checked against the versions committed before it began.
async fn read(s: &Shared, t: &mut Tally, id: u64) -> anyhow::Result<()> {
    let committed = s.versions.committed(id).load(Ordering::SeqCst);
    let invalidated = s.versions.invalidated(id).load(Ordering::SeqCst);
    let started = Instant::now();
    let product: Option<Product> = match &s.reads {
        Reads::Cached(cache) => {
            let load = s.load(id);
            cache
                .get_or_load(key(id), move || load)
                .await
                .with_context(|| format!("could not read product {id} through the cache"))?
        }
        Reads::Naive(naive) => {
            let (product, hit) = naive
                .read(id, s.load(id))
                .await
                .with_context(|| format!("could not read product {id} through the naive cache"))?;
            t.naive_hits += u64::from(hit);
            product
        }
        Reads::Direct => {
            t.direct_queries += 1;
            read_row(s.db.clone(), id, s.plan.load_delay)
                .await
                .with_context(|| format!("could not read product {id}"))?
        }
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    t.latency.saturating_record(micros.max(1));
    t.reads += 1;
    if let Some(p) = product {
        let version = u64::try_from(p.version).unwrap_or(0);
        if version < committed {
            t.stale += 1;
            if version < invalidated {
                t.stale_after_invalidation += 1;
            }
        }
    }
    Ok(())
}

impl Shared {
    /// A cache load of `id`, the same for aside and naive cache-aside:
    /// [`read_row`], counted. (Lazy, like any async block: nothing runs, and
    /// nothing is counted, until it is awaited.)
    fn load(&self, id: u64) -> impl Future<Output = Result<Option<Product>, sqlx::Error>> + use<> {
        let (db, calls, delay) = (
            self.db.clone(),
            Arc::clone(&self.loader_calls),
            self.plan.load_delay,
        );
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            read_row(db, id, delay).await
        }
    }
}

/// One database read, the same in every run: the `SELECT`, then `delay`
/// before the row is handed over (to the cache, or to the caller with no
/// cache). The delay stands for what a real read costs beyond an embedded
/// SQLite's microseconds (a network round trip, more queries,
/// serialization). In a cache load it is also the window in which a write
/// can commit and invalidate while the load holds the old row: the race the
/// stale-read counts measure.
async fn read_row(db: Db, id: u64, delay: Duration) -> Result<Option<Product>, sqlx::Error> {
    let product = db.product(to_i64(id)).await?;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(product)
}
