//! Repeated Redis outages during a run: healthy for a while, out for a
//! while, again and again until the workload's time is up.
//!
//! One outage per run (the kill and freeze tests) checks the protocol
//! across one long gap. Many outages check it across gaps that fall
//! anywhere in a load: between the generation read and the fill, during an
//! invalidation, during the retry of a queued one, and (when an outage is
//! shorter than a load) with both ends of the outage inside one load.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside_test::{Proxy, RedisServer};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// When and how long Redis is out, in milliseconds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Healthy time before each outage.
    pub healthy_ms: RangeInclusive<u64>,
    /// Length of each outage.
    pub out_ms: RangeInclusive<u64>,
    /// No outage starts after this much of the run.
    pub within: Duration,
}

/// What the outages of a test added up to, over its runs.
#[derive(Debug, Default)]
pub struct Count {
    outages: AtomicU64,
    out_us: AtomicU64,
    max_us: AtomicU64,
    seed: AtomicU64,
}

impl Count {
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// The mean outage as measured, from the moment it had begun to the
    /// moment it had surely ended (resuming a freeze runs a `kill` process,
    /// which adds a few milliseconds to the plan).
    pub fn mean(&self) -> Duration {
        let us = self.out_us.load(Ordering::Relaxed);
        Duration::from_micros(us.checked_div(self.outages()).unwrap_or(0))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Ordering::Relaxed))
    }
}

/// Runs `plan`, switching the outage on and off with `set`; leaves it off.
async fn run<Fut: Future<Output = ()>>(plan: Plan, count: Arc<Count>, set: impl Fn(bool) -> Fut) {
    // A different but reproducible sequence for each run of a test.
    let mut rng = StdRng::seed_from_u64(0x007A_6E00 + count.seed.fetch_add(1, Ordering::Relaxed));
    let end = Instant::now() + plan.within;
    loop {
        let healthy = Duration::from_millis(rng.random_range(plan.healthy_ms.clone()));
        if Instant::now() + healthy >= end {
            return;
        }
        tokio::time::sleep(healthy).await;
        let out = Duration::from_millis(rng.random_range(plan.out_ms.clone()));
        set(true).await;
        // From the outage surely begun to surely ended: an upper bound.
        let began = Instant::now();
        tokio::time::sleep(out).await;
        set(false).await;
        count.outages.fetch_add(1, Ordering::Relaxed);
        let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        count.out_us.fetch_add(took, Ordering::Relaxed);
        count.max_us.fetch_max(took, Ordering::Relaxed);
    }
}

/// Outages of the whole server: SIGSTOP, then SIGCONT. Every connection
/// stays open and unanswered; what was sent meanwhile is answered after.
pub async fn freezes(redis: Arc<RedisServer>, plan: Plan, count: Arc<Count>) {
    run(plan, count, |frozen| {
        let redis = Arc::clone(&redis);
        async move {
            // `kill` is a process: keep it off the workers' threads.
            tokio::task::spawn_blocking(move || {
                if frozen {
                    redis.pause().unwrap();
                } else {
                    redis.resume().unwrap();
                }
            })
            .await
            .unwrap();
        }
    })
    .await;
}

/// Outages of the network path only: the proxy forwards nothing, closes
/// nothing (half-open connections), and delivers what it held once healed.
/// Redis itself stays up.
pub async fn blackholes(proxy: Arc<Proxy>, plan: Plan, count: Arc<Count>) {
    run(plan, count, |on| {
        proxy.blackhole(on);
        async {}
    })
    .await;
}
