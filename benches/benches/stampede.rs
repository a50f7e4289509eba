//! The stampede: N callers ask for the same cold key at the same moment.
//!
//! Three strategies against one real `redis-server`, each with a 50 ms loader
//! that counts its calls:
//!
//! - **naive**: cache-aside by hand with redis-rs: `GET`; on a miss, load and
//!   `SET ... PX`. Every caller that misses loads.
//! - **lock + poll**: the textbook fix. `GET`; on a miss
//!   `SET lock:<key> <token> NX PX 10000`; the winner loads, `SET`s the value
//!   and `DEL`s the lock; the losers `sleep(100 ms)` and `GET` again until the
//!   value is there. Reproduced faithfully, bugs included: the winner does not
//!   read the cache again after taking the lock (a caller whose `GET` missed
//!   just before the value was written, and whose `SET NX` lands after the
//!   lock was deleted, loads a second time), and the `DEL` does not check the
//!   token.
//! - **aside**: `Cache::get_or_load` on a `RedisBackend`. The callers are
//!   spread over P = 4 independent `Cache` instances (each with its own
//!   connection, same namespace), caller i using instance i % 4, to model
//!   four processes. The raw strategies likewise use four connections.
//!
//! Each round uses a fresh key; every caller of a round is spawned, waits on
//! one barrier, and takes its start time right before its call. Latency is
//! from that start to the caller's result. Rounds of the three strategies are
//! interleaved (rotating order) so drift on a small machine hits all three.
//! The harness measures and prints; it asserts nothing.
//!
//! Run: `cargo bench -p aside-benches --bench stampede`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use hdrhistogram::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Barrier;

const COMMAND: &str = "cargo bench -p aside-benches --bench stampede";
/// Concurrent callers per round.
const CALLERS: [usize; 2] = [100, 1000];
/// Measured rounds per strategy and N (plus one warm-up round, not counted).
const ROUNDS: usize = 10;
/// Simulated processes: Cache instances (and raw connections).
const PROCESSES: usize = 4;
const WORKERS: usize = 2;
const LOADER_TIME: Duration = Duration::from_millis(50);
/// How long a lock loser sleeps between two `GET`s.
const POLL: Duration = Duration::from_millis(100);
const LOCK_TTL_MS: u64 = 10_000;
const VALUE_TTL_MS: u64 = 60_000;
/// A lock loser gives up (and counts as a wrong answer) after this many
/// polls: a guard so a broken round cannot hang the bench.
const MAX_POLLS: u32 = 200;
/// The per-operation limit of both aside's backend and the raw connections.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Targets for aside: waiters' p50 and p99 within the loader time plus these.
const P50_SLACK: Duration = Duration::from_millis(5);
const P99_SLACK: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Naive,
    Lock,
    Aside,
}

const STRATEGIES: [Strategy; 3] = [Strategy::Naive, Strategy::Lock, Strategy::Aside];

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Naive => "naive cache-aside",
            Strategy::Lock => "SET NX lock + 100 ms poll",
            Strategy::Aside => "aside (4 instances)",
        })
    }
}

impl Strategy {
    fn slug(self) -> &'static str {
        match self {
            Strategy::Naive => "naive",
            Strategy::Lock => "lock",
            Strategy::Aside => "aside",
        }
    }
}

/// What the loader of `key` returns, and so what every caller must get.
fn expected(key: &str) -> String {
    format!("value of {key}")
}

/// The loader: one counted call, 50 ms, a small value.
async fn load(calls: &AtomicU64, key: &str) -> String {
    calls.fetch_add(1, Relaxed);
    tokio::time::sleep(LOADER_TIME).await;
    expected(key)
}

async fn get(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query_async(conn).await
}

async fn set(conn: &mut ConnectionManager, key: &str, value: &str) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(VALUE_TTL_MS)
        .query_async(conn)
        .await
}

/// Cache-aside by hand: every caller that misses loads.
async fn naive(
    mut conn: ConnectionManager,
    key: &str,
    calls: &AtomicU64,
) -> redis::RedisResult<Option<String>> {
    if let Some(v) = get(&mut conn, key).await? {
        return Ok(Some(v));
    }
    let v = load(calls, key).await;
    set(&mut conn, key, &v).await?;
    Ok(Some(v))
}

/// The textbook lock: `SET NX PX`, the winner loads, the losers poll.
async fn locked(
    mut conn: ConnectionManager,
    key: &str,
    token: &str,
    calls: &AtomicU64,
) -> redis::RedisResult<Option<String>> {
    if let Some(v) = get(&mut conn, key).await? {
        return Ok(Some(v));
    }
    let lock = format!("lock:{key}");
    let won: Option<String> = redis::cmd("SET")
        .arg(&lock)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(LOCK_TTL_MS)
        .query_async(&mut conn)
        .await?;
    if won.is_some() {
        // As in the textbook: no second GET of the value after taking the lock.
        let v = load(calls, key).await;
        set(&mut conn, key, &v).await?;
        let _: i64 = redis::cmd("DEL").arg(&lock).query_async(&mut conn).await?;
        return Ok(Some(v));
    }
    for _ in 0..MAX_POLLS {
        tokio::time::sleep(POLL).await;
        if let Some(v) = get(&mut conn, key).await? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

async fn with_aside(
    cache: Cache,
    key: String,
    calls: Arc<AtomicU64>,
) -> aside::Result<Option<String>> {
    let k = key.clone();
    cache
        .get_or_load(&key, move || async move {
            Ok::<_, Infallible>(Some(load(&calls, &k).await))
        })
        .await
}

/// The figures of one strategy at one N, over all its rounds.
struct Tally {
    strategy: Strategy,
    callers: usize,
    latency_us: Histogram<u64>,
    loads: Vec<u64>,
    wrong: u64,
    examples: Vec<String>,
}

impl Tally {
    fn new(strategy: Strategy, callers: usize) -> Self {
        Self {
            strategy,
            callers,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            loads: Vec::new(),
            wrong: 0,
            examples: Vec::new(),
        }
    }
}

struct Setup {
    raw: Vec<ConnectionManager>,
    caches: Vec<Cache>,
}

/// One round: `n` callers released together on a fresh key.
async fn round(
    setup: &Setup,
    strategy: Strategy,
    n: usize,
    key: String,
    tally: Option<&mut Tally>,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut callers = Vec::with_capacity(n);
    for i in 0..n {
        let barrier = Arc::clone(&barrier);
        let calls = Arc::clone(&calls);
        let key = key.clone();
        let conn = setup.raw[i % PROCESSES].clone();
        let cache = setup.caches[i % PROCESSES].clone();
        callers.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let got: Result<Option<String>, String> = match strategy {
                Strategy::Naive => naive(conn, &key, &calls).await.map_err(|e| e.to_string()),
                Strategy::Lock => locked(conn, &key, &format!("caller-{i}"), &calls)
                    .await
                    .map_err(|e| e.to_string()),
                Strategy::Aside => with_aside(cache, key, calls)
                    .await
                    .map_err(|e| e.to_string()),
            };
            (start.elapsed(), got)
        }));
    }
    barrier.wait().await;
    let mut results = Vec::with_capacity(n);
    for c in callers {
        results.push(c.await.unwrap());
    }
    let Some(tally) = tally else { return };
    let want = expected(&key);
    for (took, got) in results {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        tally.latency_us.saturating_record(us);
        let bad = match got {
            Ok(Some(v)) if v == want => None,
            Ok(Some(v)) => Some(format!("{key}: got {v:?}, want {want:?}")),
            Ok(None) => Some(format!("{key}: got nothing")),
            Err(e) => Some(format!("{key}: error: {e}")),
        };
        if let Some(b) = bad {
            tally.wrong += 1;
            if tally.examples.len() < 5 {
                tally.examples.push(b);
            }
        }
    }
    tally.loads.push(calls.load(Relaxed));
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn row(t: &Tally) -> Vec<String> {
    let h = &t.latency_us;
    let mean = t.loads.iter().sum::<u64>() as f64 / t.loads.len() as f64;
    let max_loads = t.loads.iter().copied().max().unwrap_or(0);
    let (p50, p99) = (h.value_at_quantile(0.50), h.value_at_quantile(0.99));
    let loader_us = u64::try_from(LOADER_TIME.as_micros()).unwrap();
    let p50_target = loader_us + u64::try_from(P50_SLACK.as_micros()).unwrap();
    let p99_target = loader_us + u64::try_from(P99_SLACK.as_micros()).unwrap();
    let targets = if t.strategy == Strategy::Aside {
        [
            verdict(max_loads == 1),
            verdict(p50 <= p50_target),
            verdict(p99 <= p99_target),
        ]
    } else {
        ["-", "-", "-"]
    };
    let mut cells = vec![
        t.strategy.to_string(),
        t.callers.to_string(),
        t.loads.len().to_string(),
        format!("{mean:.1}"),
        max_loads.to_string(),
        ms(p50),
        ms(p99),
        ms(h.max()),
        t.wrong.to_string(),
    ];
    cells.extend(targets.iter().map(|s| (*s).to_owned()));
    cells
}

async fn connect(url: &str) -> Setup {
    let config = ConnectionManagerConfig::new().set_response_timeout(Some(BACKEND_TIMEOUT));
    let mut raw = Vec::new();
    let mut caches = Vec::new();
    for _ in 0..PROCESSES {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client
            .get_connection_manager_with_config(config.clone())
            .await
            .unwrap();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        raw.push(conn);
        let cache = Cache::builder()
            .backend(RedisBackend::new(url).unwrap())
            .namespace("stampede")
            .backend_timeout(BACKEND_TIMEOUT)
            .build()
            .unwrap();
        // Opens the (lazy) connection before anything is timed.
        let _: Option<String> = cache.get("warm-up").await.unwrap();
        caches.push(cache);
    }
    Setup { raw, caches }
}

fn main() {
    println!("Run: {COMMAND}");
    println!(
        "{ROUNDS} rounds per strategy and N (after 1 warm-up round), a fresh key per round; \
         loader {} ms; lock losers poll every {} ms; aside and raw callers spread over {PROCESSES} \
         instances/connections; tokio multi-thread runtime, {WORKERS} workers; {} CPUs",
        LOADER_TIME.as_millis(),
        POLL.as_millis(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    let server = aside_test::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap();
    let began = Instant::now();
    let (tallies, stats) = rt.block_on(async {
        let setup = connect(&server.url()).await;
        let mut tallies = Vec::new();
        for n in CALLERS {
            let mut by_strategy: Vec<Tally> =
                STRATEGIES.iter().map(|s| Tally::new(*s, n)).collect();
            for r in 0..=ROUNDS {
                for k in 0..STRATEGIES.len() {
                    let idx = (r + k) % STRATEGIES.len();
                    let s = STRATEGIES[idx];
                    let key = format!("{}:{n}:{r}", s.slug());
                    // Round 0 warms up and is not counted.
                    let tally = (r > 0).then(|| &mut by_strategy[idx]);
                    round(&setup, s, n, key, tally).await;
                    // Let stragglers (background fills, closing tasks) settle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tallies.extend(by_strategy);
        }
        let stats: Vec<aside::Stats> = setup.caches.iter().map(Cache::stats).collect();
        (tallies, stats)
    });
    drop(server);

    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(vec![
            "strategy",
            "N",
            "rounds",
            "loads/round mean",
            "loads/round max",
            "p50 ms",
            "p99 ms",
            "max ms",
            "wrong",
            "1 load",
            "p50 <= 55 ms",
            "p99 <= 70 ms",
        ]);
    for t in &tallies {
        table.add_row(row(t));
    }
    for i in 1..12 {
        if let Some(c) = table.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    println!();
    println!("{table}");
    println!(
        "latency: per caller, from its own start (after the shared barrier) to its result. \
         wrong: callers that did not get the loader's value. targets (last 3 columns, aside \
         only): 1 loader call in every round, p50 <= loader + {} ms, p99 <= loader + {} ms",
        P50_SLACK.as_millis(),
        P99_SLACK.as_millis()
    );
    let sum = |f: fn(&aside::Stats) -> u64| stats.iter().map(f).sum::<u64>();
    println!(
        "aside counters over the run (4 instances, warm-up rounds included): {} loads, \
         {} coalesced, {} hits, {} misses, {} backend errors, {} backend timeouts, \
         {} backend operations skipped",
        sum(|s| s.loads),
        sum(|s| s.joined),
        sum(|s| s.hits),
        sum(|s| s.misses),
        sum(|s| s.backend_errors),
        sum(|s| s.backend_timeouts),
        sum(|s| s.backend_skipped),
    );
    let wrong: u64 = tallies.iter().map(|t| t.wrong).sum();
    if wrong > 0 {
        println!();
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        println!("!!! WARNING: {wrong} caller(s) did NOT get the right value");
        for t in tallies.iter().filter(|t| t.wrong > 0) {
            println!(
                "!!!   {} N={}: {} wrong, e.g.:",
                t.strategy, t.callers, t.wrong
            );
            for e in &t.examples {
                println!("!!!     {e}");
            }
        }
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    } else {
        println!("every caller got the right value");
    }
    println!("total {:.1} s", began.elapsed().as_secs_f64());
}
