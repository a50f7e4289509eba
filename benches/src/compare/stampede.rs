//! Scenario 4: a stampede in one process. N callers (100, 1,000) ask for
//! one cold key at once; the loader takes 50 ms and counts its calls.
//!
//! - naive cache-aside on Redis: `GET`; on a miss load and `SET EX`.
//! - the seeds' lock (`CacheAsideWithLock`), reproduced as written: `GET`;
//!   on a miss `SET lock:<key> <uuid> NX EX 5`; the winner loads, `SETEX`s
//!   and releases the lock with a compare-and-delete script (it does not
//!   read the cache again after taking the lock); a loser sleeps 100 ms and
//!   `GET`s, up to 10 times, then loads by itself.
//! - aside: one `Cache` over `RedisBackend` (the deployment of one process).
//! - the `cached` crate's `#[cached]` on an async fn, in memory, with
//!   `sync_writes = "by_key"` (its stampede option) and without (its
//!   default).
//!
//! A fresh key per round; callers are spawned, wait on one barrier and take
//! their start time right before their call. Strategies rotate per round.
//!
//! The contenders, the loader and the table are shared with the stampede
//! over four processes (`stampede_procs`), which adds the `cached` crate's
//! Redis macro.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use cached::macros::{cached, concurrent_cached};
use hdrhistogram::Histogram;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use super::{Opts, Spread, cdf, histogram, human_ns, record, table, verdict};

pub(super) const CALLERS: [usize; 2] = [100, 1_000];
pub(super) const LOADER: Duration = Duration::from_millis(50);
const POLL: Duration = Duration::from_millis(100);
const POLLS: u32 = 10;
const LOCK_TTL_S: u64 = 5;
const VALUE_TTL_S: u64 = 300;
const P50_SLACK: Duration = Duration::from_millis(5);

/// Loader calls of the current round in this process (reset before each
/// round).
pub(super) static CALLS: AtomicU64 = AtomicU64::new(0);

pub(super) fn expected(key: &str) -> String {
    format!("value of {key}")
}

/// The longest loader run of the current round in this process, ns: on a
/// busy machine the 50 ms sleep itself can overrun, and every waiter with it.
pub(super) static LOAD_NS_MAX: AtomicU64 = AtomicU64::new(0);

pub(super) async fn load(key: &str) -> String {
    CALLS.fetch_add(1, Relaxed);
    let start = Instant::now();
    tokio::time::sleep(LOADER).await;
    let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    LOAD_NS_MAX.fetch_max(took, Relaxed);
    expected(key)
}

#[cached(sync_writes = "by_key", ttl_secs = 300)]
async fn cached_by_key(key: String) -> String {
    load(&key).await
}

#[cached(ttl_secs = 300)]
async fn cached_default(key: String) -> String {
    load(&key).await
}

/// The `cached` crate's Redis memoization as its docs show it: an
/// `AsyncRedisCache` (URL from `CACHED_REDIS_CONNECTION_STRING`) built on
/// the first call; a miss runs the body and `PSETEX`es the result. The macro
/// has no `sync_writes` for stores like this one: concurrent misses all load.
#[concurrent_cached(redis = true, ttl_secs = 300, map_error = r##"|e| format!("{e}")"##)]
async fn cached_redis(key: String) -> Result<String, String> {
    Ok(load(&key).await)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strategy {
    Naive,
    SeedLock,
    Aside,
    CachedRedis,
    CachedByKey,
    CachedDefault,
}

const STRATEGIES: [Strategy; 5] = [
    Strategy::Naive,
    Strategy::SeedLock,
    Strategy::Aside,
    Strategy::CachedByKey,
    Strategy::CachedDefault,
];

impl Strategy {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Naive => "naive cache-aside (Redis)",
            Self::SeedLock => "seeds' SET NX lock + 100 ms poll (Redis)",
            Self::Aside => "aside (Redis)",
            Self::CachedRedis => "cached #[concurrent_cached(redis = true)] (Redis)",
            Self::CachedByKey => "cached #[cached(sync_writes = \"by_key\")] (memory)",
            Self::CachedDefault => "cached #[cached] default (memory)",
        }
    }

    /// The name a parent sends its child processes.
    pub(super) fn tag(self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::SeedLock => "seed_lock",
            Self::Aside => "aside",
            Self::CachedRedis => "cached_redis",
            Self::CachedByKey => "cached_by_key",
            Self::CachedDefault => "cached_default",
        }
    }

    pub(super) fn from_tag(tag: &str) -> Option<Self> {
        [
            Self::Naive,
            Self::SeedLock,
            Self::Aside,
            Self::CachedRedis,
            Self::CachedByKey,
            Self::CachedDefault,
        ]
        .into_iter()
        .find(|s| s.tag() == tag)
    }
}

async fn get(conn: &mut ConnectionManager, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn setex(conn: &mut ConnectionManager, key: &str, v: &str) {
    let () = redis::cmd("SETEX")
        .arg(key)
        .arg(VALUE_TTL_S)
        .arg(v)
        .query_async(conn)
        .await
        .unwrap();
}

async fn naive(mut conn: ConnectionManager, key: &str) -> String {
    if let Some(v) = get(&mut conn, key).await {
        return v;
    }
    let v = load(key).await;
    setex(&mut conn, key, &v).await;
    v
}

/// The seeds' `CacheAsideWithLock.get_or_load`, line by line.
async fn seed_lock(mut conn: ConnectionManager, key: &str, lock_id: &str) -> String {
    if let Some(v) = get(&mut conn, key).await {
        return v;
    }
    let lock_key = format!("lock:{key}");
    let acquired: Option<String> = redis::cmd("SET")
        .arg(&lock_key)
        .arg(lock_id)
        .arg("NX")
        .arg("EX")
        .arg(LOCK_TTL_S)
        .query_async(&mut conn)
        .await
        .unwrap();
    if acquired.is_some() {
        let v = load(key).await;
        setex(&mut conn, key, &v).await;
        let _: i64 = redis::Script::new(
            "if redis.call('get', KEYS[1]) == ARGV[1] then \
               return redis.call('del', KEYS[1]) end return 0",
        )
        .key(&lock_key)
        .arg(lock_id)
        .invoke_async(&mut conn)
        .await
        .unwrap();
        return v;
    }
    for _ in 0..POLLS {
        tokio::time::sleep(POLL).await;
        if let Some(v) = get(&mut conn, key).await {
            return v;
        }
    }
    // "Fallback: load directly if the lock holder was too slow".
    load(key).await
}

/// One caller's call with strategy `s`; `lock_id` is the caller's token for
/// the seeds' lock (unique across processes).
pub(super) async fn call(
    s: Strategy,
    conn: ConnectionManager,
    cache: &Cache,
    key: &str,
    lock_id: &str,
) -> String {
    match s {
        Strategy::Naive => naive(conn, key).await,
        Strategy::SeedLock => seed_lock(conn, key, lock_id).await,
        Strategy::Aside => {
            let k = key.to_owned();
            cache
                .get_or_load(key, move || async move {
                    Ok::<_, Infallible>(Some(load(&k).await))
                })
                .await
                .unwrap()
                .unwrap_or_default()
        }
        // An error (Redis refused, connection lost) counts as a wrong value.
        Strategy::CachedRedis => cached_redis(key.to_owned()).await.unwrap_or_default(),
        Strategy::CachedByKey => cached_by_key(key.to_owned()).await,
        Strategy::CachedDefault => cached_default(key.to_owned()).await,
    }
}

/// `n` callers of strategy `s` for `key`, each in a task of its own held at
/// the returned barrier (of `n + 1`: the caller's `wait` releases them all);
/// each answers how long its call took and whether it got the right value.
/// `lock_prefix` keeps the seeds' lock tokens unique across processes.
pub(super) fn spawn_callers(
    s: Strategy,
    conn: &ConnectionManager,
    cache: &Cache,
    key: &str,
    n: usize,
    lock_prefix: &str,
) -> (Arc<Barrier>, Vec<JoinHandle<(Duration, bool)>>) {
    let barrier = Arc::new(Barrier::new(n + 1));
    let callers = (0..n)
        .map(|i| {
            let (barrier, conn, cache, key) = (
                Arc::clone(&barrier),
                conn.clone(),
                cache.clone(),
                key.to_owned(),
            );
            let lock_id = format!("{lock_prefix}caller-{i}");
            tokio::spawn(async move {
                barrier.wait().await;
                let start = Instant::now();
                let got = call(s, conn, &cache, &key, &lock_id).await;
                (start.elapsed(), got == expected(&key))
            })
        })
        .collect();
    (barrier, callers)
}

/// The callers' latencies and how many got a wrong value.
pub(super) async fn gather(callers: Vec<JoinHandle<(Duration, bool)>>) -> (Vec<Duration>, u64) {
    let (mut lat, mut wrong) = (Vec::with_capacity(callers.len()), 0);
    for c in callers {
        let (took, ok) = c.await.unwrap();
        lat.push(took);
        wrong += u64::from(!ok);
    }
    (lat, wrong)
}

pub(super) struct Tally {
    pub(super) strategy: Strategy,
    pub(super) callers: usize,
    pub(super) latency: Histogram<u64>,
    /// Loader calls per round (over every process).
    pub(super) loads: Vec<u64>,
    /// Commands Redis processed per round (all connections): where a
    /// strategy's time goes on a 2-CPU machine shared with redis-server.
    pub(super) commands: Vec<u64>,
    /// The callers' median latency per round: with `commands`, shows what a
    /// round's Redis traffic costs its callers.
    pub(super) round_p50: Vec<u64>,
    pub(super) wrong: u64,
}

impl Tally {
    pub(super) fn new(strategy: Strategy, callers: usize) -> Self {
        Self {
            strategy,
            callers,
            latency: histogram(),
            loads: Vec::new(),
            commands: Vec::new(),
            round_p50: Vec::new(),
            wrong: 0,
        }
    }

    /// One measured round: every caller's latency, the loader calls (over
    /// every process), Redis commands and wrong values.
    pub(super) fn add_round(&mut self, lat: &[Duration], loads: u64, cmds: u64, wrong: u64) {
        let mut h = histogram();
        for d in lat {
            record(&mut self.latency, *d);
            record(&mut h, *d);
        }
        self.round_p50.push(h.value_at_quantile(0.5));
        self.loads.push(loads);
        self.commands.push(cmds);
        self.wrong += wrong;
    }
}

/// Redis's `total_commands_processed` (the `INFO` call itself counts once).
pub(super) async fn commands(conn: &ConnectionManager) -> u64 {
    let info = super::cost::info(conn, "stats").await;
    super::cost::info_field(&info, "total_commands_processed:") as u64
}

async fn round(
    conn: &ConnectionManager,
    cache: &Cache,
    s: Strategy,
    n: usize,
    key: &str,
) -> (Vec<Duration>, u64, u64) {
    CALLS.store(0, Relaxed);
    let (barrier, callers) = spawn_callers(s, conn, cache, key, n, "");
    barrier.wait().await;
    let (lat, wrong) = gather(callers).await;
    (lat, CALLS.load(Relaxed), wrong)
}

pub async fn run(opts: &Opts) -> Value {
    let conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let cache = Cache::builder()
        .backend(RedisBackend::new(&opts.url).unwrap())
        .namespace("stampede")
        .build()
        .unwrap();
    let _: Option<String> = cache.get("warm-up").await.unwrap();
    let rounds = opts.rounds.min(10);
    let mut tallies = Vec::new();
    for n in CALLERS {
        let mut by: Vec<Tally> = STRATEGIES.iter().map(|s| Tally::new(*s, n)).collect();
        // Round 0 warms up and is not counted.
        for r in 0..=rounds {
            for i in super::rotation(STRATEGIES.len(), r) {
                let key = format!("{i}:{n}:{r}");
                // Let stragglers (background fills, lock deletes) settle
                // before the count starts.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let before = commands(&conn).await;
                let (lat, loads, wrong) = round(&conn, &cache, STRATEGIES[i], n, &key).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let cmds = commands(&conn).await - before - 1;
                if r > 0 {
                    by[i].add_round(&lat, loads, cmds, wrong);
                }
            }
        }
        tallies.extend(by);
    }
    report(
        &format!(
            "Stampede in one process: N callers, one cold key, 50 ms loader ({rounds} rounds each)"
        ),
        &tallies,
    )
}

/// Prints the table of a stampede scenario and returns its JSON rows (with
/// the latency `cdf` the plots draw).
pub(super) fn report(title: &str, tallies: &[Tally]) -> Value {
    println!("\n{title}");
    let mut t = table(&[
        "strategy",
        "N",
        "loads/round mean",
        "max",
        "p50",
        "p99",
        "max latency",
        "Redis cmds/round",
        "wrong",
        "aside targets",
    ]);
    let p50_target = (LOADER + P50_SLACK).as_nanos() as f64;
    let mut out = Vec::new();
    for tl in tallies {
        let mean = tl.loads.iter().sum::<u64>() as f64 / tl.loads.len() as f64;
        let max = tl.loads.iter().copied().max().unwrap_or(0);
        let (p50, p99) = (
            tl.latency.value_at_quantile(0.5),
            tl.latency.value_at_quantile(0.99),
        );
        let targets =
            (tl.strategy == Strategy::Aside).then_some((max == 1, p50 as f64 <= p50_target));
        t.add_row(vec![
            tl.strategy.name().to_owned(),
            tl.callers.to_string(),
            format!("{mean:.1}"),
            max.to_string(),
            human_ns(p50 as f64),
            human_ns(p99 as f64),
            human_ns(tl.latency.max() as f64),
            format!(
                "{:.0}",
                Spread::of(&tl.commands.iter().map(|c| *c as f64).collect::<Vec<_>>()).median
            ),
            tl.wrong.to_string(),
            targets.map_or_else(
                || "-".to_owned(),
                |(one, p)| format!("1 load: {}; p50 <= 55 ms: {}", verdict(one), verdict(p)),
            ),
        ]);
        out.push(json!({
            "strategy": tl.strategy.name(), "callers": tl.callers,
            "loads_per_round": tl.loads, "p50_ns": p50, "p99_ns": p99,
            "max_ns": tl.latency.max(), "wrong": tl.wrong,
            "redis_commands_per_round": tl.commands, "p50_per_round_ns": tl.round_p50,
            "targets_met": targets.map(|(a, b)| a && b),
            "cdf": cdf(&tl.latency),
        }));
    }
    println!("{t}");
    Value::Array(out)
}
