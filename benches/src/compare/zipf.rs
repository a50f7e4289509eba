//! Scenario 7: a Zipf read/write workload over a real database, SQLite (a
//! file, WAL) and PostgreSQL (a throwaway server from `aside_test`).
//!
//! 16 tasks pick product ids from a Zipf distribution (s = 1.1, 10,000
//! rows); 2% of the operations are writes (`UPDATE ... version = version +
//! 1`, then the cache's invalidation), the rest reads. Every database read
//! (a load, or a direct read) holds the row 1 ms after its `SELECT`, the
//! cost of a read beyond the query and the window in which a write can
//! commit while a load holds the old row.
//!
//! - aside: `get_or_load` over `RedisBackend`; writes `invalidate`.
//! - naive cache-aside on Redis: `GET`; on a miss `SELECT` and `SET EX`;
//!   writes `DEL` after the `UPDATE`.
//! - no cache: every read is a `SELECT`.
//!
//! Stale read: a read that returned a version older than one whose write
//! had finished (the `UPDATE` committed and the cache invalidated) before
//! the read began (aside promises none). Rounds rotate
//! the contenders; a fresh key namespace per run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, Zipf};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::breakdown::{self, Split};
use super::cost::Cost;
use super::{Opts, Spread, histogram, human_ns, record, rotation, table};

const ROWS: u64 = 10_000;
const TASKS: usize = 16;
const WRITE_SHARE: f64 = 0.02;
const ZIPF_S: f64 = 1.1;
const LOAD_DELAY: Duration = Duration::from_millis(1);
const RUN: Duration = Duration::from_secs(2);
const TTL_S: u64 = 300;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub id: i64,
    pub version: i64,
    pub price: i64,
}

/// The database under test.
#[derive(Clone)]
enum Db {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Db {
    async fn sqlite(path: &std::path::Path) -> Self {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .unwrap();
        Self::Sqlite(pool)
    }

    async fn pg(url: &str) -> Self {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            .unwrap();
        Self::Pg(pool)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Pg(_) => "PostgreSQL",
        }
    }

    async fn seed(&self) {
        let create = "CREATE TABLE products (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, \
                      price BIGINT NOT NULL)";
        // One statement for all rows: generate_series / a recursive CTE.
        match self {
            Self::Sqlite(p) => {
                sqlx::query(create).execute(p).await.unwrap();
                sqlx::query(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
                     INSERT INTO products SELECT i, 1, 1000 FROM n",
                )
                .bind(ROWS as i64)
                .execute(p)
                .await
                .unwrap();
            }
            Self::Pg(p) => {
                sqlx::query("DROP TABLE IF EXISTS products")
                    .execute(p)
                    .await
                    .unwrap();
                sqlx::query(create).execute(p).await.unwrap();
                sqlx::query(
                    "INSERT INTO products SELECT i, 1, 1000 FROM generate_series(1, $1) AS i",
                )
                .bind(ROWS as i64)
                .execute(p)
                .await
                .unwrap();
            }
        }
    }

    async fn row(&self, id: i64) -> Option<Row> {
        let got: Option<(i64, i64, i64)> = match self {
            Self::Sqlite(p) => {
                sqlx::query_as("SELECT id, version, price FROM products WHERE id = ?")
                    .bind(id)
                    .fetch_optional(p)
                    .await
                    .unwrap()
            }
            Self::Pg(p) => sqlx::query_as("SELECT id, version, price FROM products WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
                .unwrap(),
        };
        got.map(|(id, version, price)| Row { id, version, price })
    }

    /// The new version.
    async fn update(&self, id: i64, price: i64) -> i64 {
        let (v,): (i64,) = match self {
            Self::Sqlite(p) => sqlx::query_as(
                "UPDATE products SET version = version + 1, price = ? WHERE id = ? RETURNING version",
            )
            .bind(price)
            .bind(id)
            .fetch_one(p)
            .await
            .unwrap(),
            Self::Pg(p) => sqlx::query_as(
                "UPDATE products SET version = version + 1, price = $1 WHERE id = $2 RETURNING version",
            )
            .bind(price)
            .bind(id)
            .fetch_one(p)
            .await
            .unwrap(),
        };
        v
    }
}

#[derive(Clone)]
enum Reads {
    Aside(Cache),
    Naive(ConnectionManager, String),
    Direct,
}

const NAMES: [&str; 3] = ["aside (Redis)", "naive cache-aside (Redis)", "no cache"];

/// Per row, the newest version whose write finished: committed, and the
/// cache invalidated (index `id - 1`).
struct Shared {
    db: Db,
    committed: Vec<AtomicU64>,
    queries: AtomicU64,
    stop: AtomicBool,
}

#[derive(Default)]
struct Tally {
    reads: u64,
    writes: u64,
    hits: u64,
    stale: u64,
    lat: Option<Histogram<u64>>,
    /// The breakdown: reads whose own call ran the loader, the others
    /// (hits, and callers that joined a load), and writes.
    split: Option<Split>,
}

async fn load_row(s: &Shared, id: i64) -> Option<Row> {
    s.queries.fetch_add(1, SeqCst);
    let row = s.db.row(id).await;
    tokio::time::sleep(LOAD_DELAY).await;
    row
}

/// A read, and whether this call ran the loader itself.
async fn read(s: &Arc<Shared>, reads: &Reads, id: i64, t: &mut Tally) -> (Option<Row>, bool) {
    match reads {
        Reads::Aside(cache) => {
            let s = Arc::clone(s);
            let loaded = Arc::new(AtomicBool::new(false));
            let mine = Arc::clone(&loaded);
            let row = cache
                .get_or_load(format!("p:{id}"), move || async move {
                    mine.store(true, SeqCst);
                    Ok::<_, std::convert::Infallible>(load_row(&s, id).await)
                })
                .await
                .unwrap();
            (row, loaded.load(SeqCst))
        }
        Reads::Naive(conn, ns) => {
            let mut conn = conn.clone();
            let key = format!("{ns}:p:{id}");
            let got: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if let Some(bytes) = got {
                t.hits += 1;
                return (rmp_serde::from_slice(&bytes).unwrap(), false);
            }
            let row = load_row(s, id).await;
            let bytes = rmp_serde::to_vec(&row).unwrap();
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(bytes)
                .arg("EX")
                .arg(TTL_S)
                .query_async(&mut conn)
                .await
                .unwrap();
            (row, true)
        }
        Reads::Direct => (load_row(s, id).await, true),
    }
}

async fn write(s: &Shared, reads: &Reads, id: i64, price: i64) {
    let v = s.db.update(id, price).await;
    match reads {
        Reads::Aside(cache) => {
            cache.invalidate(format!("p:{id}")).await.unwrap();
        }
        Reads::Naive(conn, ns) => {
            let mut conn = conn.clone();
            let () = redis::cmd("DEL")
                .arg(format!("{ns}:p:{id}"))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        Reads::Direct => {}
    }
    // Only now is the write done, in the promise's sense: a read that
    // begins after this point must not return an older version. (A read
    // that began between the UPDATE and the invalidation may: the write
    // was still in progress.)
    s.committed[(id - 1) as usize].fetch_max(v as u64, SeqCst);
}

async fn worker(s: Arc<Shared>, reads: Reads, seed: u64, until: Instant) -> Tally {
    let zipf = Zipf::new(ROWS as f64, ZIPF_S).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Tally {
        lat: Some(histogram()),
        split: Some(Split::new()),
        ..Tally::default()
    };
    while Instant::now() < until && !s.stop.load(SeqCst) {
        let id = (zipf.sample(&mut rng) as i64).clamp(1, ROWS as i64);
        if rng.random::<f64>() < WRITE_SHARE {
            let start = Instant::now();
            write(&s, &reads, id, rng.random_range(100..100_000)).await;
            if let Some(split) = t.split.as_mut() {
                record(&mut split.writes, start.elapsed());
            }
            t.writes += 1;
            continue;
        }
        let committed = s.committed[(id - 1) as usize].load(SeqCst);
        let start = Instant::now();
        let (row, loaded) = read(&s, &reads, id, &mut t).await;
        let took = start.elapsed();
        if let Some(h) = t.lat.as_mut() {
            record(h, took);
        }
        if let Some(split) = t.split.as_mut() {
            record(
                if loaded {
                    &mut split.loaded
                } else {
                    &mut split.served
                },
                took,
            );
        }
        t.reads += 1;
        if row.is_none_or(|r| (r.version as u64) < committed) {
            t.stale += 1;
        }
    }
    t
}

/// What one run of one contender measured.
struct Run {
    reads: u64,
    writes: u64,
    queries: u64,
    hit_ratio: f64,
    stale: u64,
    lat: Histogram<u64>,
    split: Split,
    /// Redis commands, Redis CPU and this process's CPU over the run.
    cost: Cost,
}

async fn run_one(s: &Arc<Shared>, conn: &ConnectionManager, reads: Reads, seed: u64) -> Run {
    s.queries.store(0, SeqCst);
    let before = Cost::now(conn).await;
    let until = Instant::now() + run_time();
    let handles: Vec<_> = (0..TASKS)
        .map(|i| {
            tokio::spawn(worker(
                Arc::clone(s),
                reads.clone(),
                seed ^ (i as u64 + 1),
                until,
            ))
        })
        .collect();
    let mut lat = histogram();
    let mut split = Split::new();
    let (mut r, mut w, mut hits, mut stale) = (0, 0, 0, 0);
    for h in handles {
        let t = h.await.unwrap();
        r += t.reads;
        w += t.writes;
        hits += t.hits;
        stale += t.stale;
        if let Some(l) = &t.lat {
            lat.add(l).unwrap();
        }
        if let Some(other) = &t.split {
            split.add(other);
        }
    }
    let cost = Cost::now(conn).await.since(before);
    let hit_ratio = match &reads {
        Reads::Aside(cache) => cache.stats().hit_ratio(),
        Reads::Naive(..) => hits as f64 / r.max(1) as f64,
        Reads::Direct => 0.0,
    };
    Run {
        reads: r,
        writes: w,
        queries: s.queries.load(SeqCst),
        hit_ratio,
        stale,
        lat,
        split,
        cost,
    }
}

/// `ASIDE_ZIPF_SECS` lengthens each run (for a profiler); 2 s by default.
fn run_time() -> Duration {
    std::env::var("ASIDE_ZIPF_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(RUN, Duration::from_secs)
}

/// `ASIDE_ZIPF_FILL_IN_BACKGROUND=1` builds aside's cache with
/// `fill_in_background(true)`.
fn fill_in_background() -> bool {
    std::env::var("ASIDE_ZIPF_FILL_IN_BACKGROUND").is_ok_and(|v| v == "1")
}

/// `ASIDE_ZIPF_ONLY=aside|naive|none` runs one contender alone, so that a
/// profiler sees only its work; every contender by default.
fn contenders() -> Vec<usize> {
    match std::env::var("ASIDE_ZIPF_ONLY").as_deref() {
        Ok("aside") => vec![0],
        Ok("naive") => vec![1],
        Ok("none") => vec![2],
        Ok(other) => panic!("ASIDE_ZIPF_ONLY={other}: aside, naive or none"),
        Err(_) => (0..NAMES.len()).collect(),
    }
}

async fn on(db: Db, opts: &Opts, rounds: usize) -> Vec<(usize, Run)> {
    db.seed().await;
    let shared = Arc::new(Shared {
        db,
        committed: (0..ROWS).map(|_| AtomicU64::new(1)).collect(),
        queries: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let mut runs = Vec::new();
    for r in 0..rounds {
        let only = contenders();
        for i in rotation(NAMES.len(), r).filter(|i| only.contains(i)) {
            let ns = format!("zipf-{}-{r}-{i}", shared.db.name());
            let reads = match i {
                0 => Reads::Aside(
                    Cache::builder()
                        .backend(RedisBackend::new(&opts.url).unwrap())
                        .namespace(&ns)
                        .ttl(Duration::from_secs(TTL_S))
                        .fill_in_background(fill_in_background())
                        .build()
                        .unwrap(),
                ),
                1 => Reads::Naive(conn.clone(), ns),
                _ => Reads::Direct,
            };
            runs.push((i, run_one(&shared, &conn, reads, 42 + r as u64).await));
        }
    }
    runs
}

pub async fn run(opts: &Opts) -> Value {
    let rounds = opts.rounds.clamp(1, 5);
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let sqlite = Db::sqlite(&dir.path().join("zipf.db")).await;
    let pg_server = aside_test::PgServer::start();
    let mut dbs = vec![(sqlite.name(), on(sqlite, opts, rounds).await)];
    match &pg_server {
        Ok(pg) => {
            let db = Db::pg(&pg.url()).await;
            dbs.push((db.name(), on(db, opts, rounds).await));
        }
        Err(e) => println!("\n(PostgreSQL skipped: {e})"),
    }
    println!(
        "\nZipf workload: {TASKS} tasks, s = {ZIPF_S}, {ROWS} rows, {:.0}% writes, \
         {LOAD_DELAY:?} per database read, {:?} per run, {rounds} rounds",
        WRITE_SHARE * 100.0,
        run_time()
    );
    let mut t = table(&[
        "database",
        "contender",
        "reads/s (median)",
        "queries saved vs reads",
        "hit ratio",
        "p50",
        "p99",
        "stale reads (all rounds)",
        "writes",
        "Redis cmds/op (in scripts too)",
        "scripts/op",
        "Redis CPU/op",
        "client CPU/op",
    ]);
    for (db, runs) in &dbs {
        for (i, name) in NAMES.iter().enumerate() {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|(k, _)| *k == i)
                .map(|(_, r)| r)
                .collect();
            let per_s = Spread::of(
                &mine
                    .iter()
                    .map(|r| r.reads as f64 / run_time().as_secs_f64())
                    .collect::<Vec<_>>(),
            );
            let saved = Spread::of(
                &mine
                    .iter()
                    .map(|r| 1.0 - r.queries as f64 / r.reads.max(1) as f64)
                    .collect::<Vec<_>>(),
            );
            let hit = Spread::of(&mine.iter().map(|r| r.hit_ratio).collect::<Vec<_>>());
            let mut lat = histogram();
            for r in &mine {
                lat.add(&r.lat).unwrap();
            }
            if mine.is_empty() {
                continue;
            }
            let stale: u64 = mine.iter().map(|r| r.stale).sum();
            // Per operation (read or write), medians over the runs.
            let per_op = |f: &dyn Fn(&Run) -> f64| {
                Spread::of(
                    &mine
                        .iter()
                        .map(|r| f(r) / (r.reads + r.writes).max(1) as f64)
                        .collect::<Vec<_>>(),
                )
                .median
            };
            let cmds = per_op(&|r| r.cost.commands as f64);
            let scripts = per_op(&|r| r.cost.scripts as f64);
            let redis_cpu = per_op(&|r| r.cost.redis_cpu_s * 1e9);
            let client_cpu = per_op(&|r| r.cost.client_cpu_s * 1e9);
            let writes: u64 = mine.iter().map(|r| r.writes).sum();
            t.add_row(vec![
                (*db).to_owned(),
                (*name).to_owned(),
                format!("{:.0}", per_s.median),
                format!("{:.1}%", saved.median * 100.0),
                format!("{:.3}", hit.median),
                human_ns(lat.value_at_quantile(0.5) as f64),
                human_ns(lat.value_at_quantile(0.99) as f64),
                stale.to_string(),
                writes.to_string(),
                format!("{cmds:.2}"),
                format!("{scripts:.3}"),
                human_ns(redis_cpu),
                human_ns(client_cpu),
            ]);
            out.push(json!({
                "database": db, "contender": name,
                "reads_per_s": per_s.json(), "queries_saved": saved.json(),
                "hit_ratio": hit.json(), "p50_ns": lat.value_at_quantile(0.5),
                "p99_ns": lat.value_at_quantile(0.99), "stale_reads": stale, "writes": writes,
                "redis_commands_per_op": cmds, "scripts_per_op": scripts, "redis_cpu_ns_per_op": redis_cpu,
                "client_cpu_ns_per_op": client_cpu,
            }));
        }
    }
    println!("{t}");
    let mut rows = Vec::new();
    for (db, runs) in &dbs {
        for (i, name) in NAMES.iter().enumerate() {
            let mut split = Split::new();
            for (_, r) in runs.iter().filter(|(k, _)| *k == i) {
                split.add(&r.split);
            }
            rows.push((*db, *name, split));
        }
    }
    println!("{}", breakdown::table(&rows));
    Value::Array(out)
}
