//! Consistency across processes: several OS processes share one Redis and
//! one PostgreSQL, and each runs readers and writers of the same rows.
//!
//! The promise under test: once `invalidate`, `invalidate_many`,
//! `invalidate_tag(s)` or `invalidate_namespace` has returned `Applied` in
//! one process, no read (`get_or_load_with` or `get`) that begins
//! afterwards, in that process or any other, returns a version loaded
//! before the write. The single-process harness (the `consistency` binary's
//! `fill_race`) cannot see what only happens across processes: a load in flight in
//! process A while process B invalidates (B cannot forget A's flights), a
//! lease held in A while B writes, version counters and generation markers
//! that expire between one process's load and another's write.
//!
//! How it runs. The test (the parent) starts a Redis of its own and creates
//! a fresh PostgreSQL schema with the rows and two logs, then runs this same
//! test binary again [`WORKERS`] times (`--exact consistency::worker`) with
//! [`WORKER_ENV`] set to the run's configuration; the `worker` test returns
//! at once when that variable is absent, so it is a no-op in a normal run.
//! Every worker starts at the same wall-clock instant and, for
//! [`DURATION`]:
//! - readers call `get_or_load_with` on a mostly hot set of rows, taking the
//!   wall-clock time (ns since the Unix epoch) right *before* the call; the
//!   loader `SELECT`s the row and then waits 0-20 ms before returning it,
//!   which opens the cache-aside race wide. One read in ten is a plain `get`
//!   instead (logged when it finds a value);
//! - writers `UPDATE rows SET version = version + 1` (autocommit) and then
//!   invalidate the row's key or its tag; a fifth of the writes update two
//!   rows in one statement and invalidate both keys (`invalidate_many`) or
//!   both tags (`invalidate_tags`). One more writer per process invalidates
//!   the whole namespace at random intervals around the counter TTL. When
//!   the invalidation returns `Applied`, the writer takes the wall-clock
//!   time.
//!
//! Each worker then bulk-inserts its reads `(row, version, started_at)` and
//! its applied writes `(row, version, applied_at)` into the schema, and the
//! parent checks every read: it is stale when it returned a version older
//! than the newest version of its row whose invalidation had returned
//! before the read began. Every process runs on the same machine, so they
//! share one wall clock.
//!
//! The cache's times are short next to the run (entries 300 ms, generation
//! markers 100 ms, version counters a few hundred ms, leases 90 ms), so that
//! entries, markers, counters and leases expire many times over, on hot and
//! on cold rows.
//!
//! The same harness runs textbook cache-aside (`GET`; on a miss `SELECT`,
//! wait, `SET ... PX`; writers `DEL`), and asserts that it *does* serve stale
//! reads: that is what shows the harness can fail.
//!
//! The parent starts a PostgreSQL of its own (`aside_test::pg_url`, or the
//! server `ASIDE_TEST_PG_URL` names) and passes its URL to the workers, so it
//! needs PostgreSQL's server programs installed; the tests fail, rather than
//! skip, without them.
#![allow(clippy::print_stderr)]

mod child;

use std::collections::HashMap;
use std::process::Stdio;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aside::backend::RedisBackend;
use aside::{Cache, EntryOptions, Invalidation, Key};
use aside_test::fixtures::{redis_server, test_name};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tokio::task::JoinSet;

/// Set (to the run's JSON configuration) in the environment of a worker.
const WORKER_ENV: &str = "ASIDE_MULTIPROCESS_WORKER";
/// Runs of the aside test (the naive control needs one).
const ASIDE_RUNS: u64 = 2;
/// Worker processes per run.
const WORKERS: u32 = 2;
/// How long each worker runs its readers and writers.
const DURATION: Duration = Duration::from_secs(5);
/// Time for the workers to start and connect before the common start.
const STARTUP: Duration = Duration::from_millis(1500);
/// A worker still running this long after the end of the workload is
/// killed, and the test fails.
const WORKER_GRACE: Duration = Duration::from_secs(40);

/// Rows `1..=ROWS`, all at version 1 to begin with.
const ROWS: i32 = 52;
/// Rows `1..=HOT_ROWS` take [`HOT_SHARE`] of the operations: loads and
/// invalidations of those keys overlap all the time. Each of the other rows
/// is written every 200 ms or so on average (random intervals around the
/// marker TTL), so their markers expire between some writes and not between
/// others.
const HOT_ROWS: i32 = 4;
const HOT_SHARE: f64 = 0.5;
/// The hot rows carry the tag `hot`, bumped all the time; the others
/// `c<id % COLD_TAGS>`, each bumped every 150-200 ms on average, at random
/// intervals around the counters' TTL (about 300 ms).
const COLD_TAGS: i32 = 16;
/// Tasks per worker.
const READERS: usize = 12;
const WRITERS: usize = 2;
/// The loader waits up to this long between its `SELECT` and returning.
const MAX_LOAD_DELAY_MS: u64 = 20;
/// Share of reads that are a plain `get` (no loader); a miss is not logged.
const PLAIN_GET_SHARE: f64 = 0.1;
/// Share of writes that invalidate keys (the others, tags).
const KEY_SHARE: f64 = 0.6;
/// Share of writes that update two rows and invalidate both at once
/// (`invalidate_many`, `invalidate_tags`).
const TWO_ROW_SHARE: f64 = 0.2;
/// A writer pauses up to this long between writes.
const MAX_WRITE_PAUSE_MS: u64 = 15;
/// Each worker's namespace writer waits up to this long between namespace
/// invalidations (uniformly): with two workers, the namespace counter is
/// bumped every 350 ms on average, so it sometimes outlives its TTL and
/// sometimes does not.
const MAX_NAMESPACE_PAUSE_MS: u64 = 1400;

/// Cache times, short next to the run.
const TTL: Duration = Duration::from_millis(300);
const MARKER_TTL: Duration = Duration::from_millis(100);
const LEASE_TTL: Duration = Duration::from_millis(90);
const LEASE_WAIT: Duration = Duration::from_millis(300);

/// Which cache a run's workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Aside,
    Naive,
}

/// What a worker is told, through [`WORKER_ENV`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerConfig {
    kind: Kind,
    worker: i32,
    pg_url: String,
    schema: String,
    redis_url: String,
    /// The cache namespace (aside) or key prefix (naive).
    namespace: String,
    /// Wall-clock ns since the Unix epoch at which the workload starts.
    start_at_ns: i64,
    duration_ms: u64,
    seed: u64,
}

fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_nanos()).expect("before 2262")
}

// ---------------------------------------------------------------------------
// PostgreSQL: a fresh schema per run.
// ---------------------------------------------------------------------------

/// The PostgreSQL of this test binary (started on a free port and stopped
/// when the binary exits, or `ASIDE_TEST_PG_URL`'s), or a panic saying what
/// is needed. The workers get its URL in their configuration.
async fn pg_admin() -> (String, PgPool) {
    let url = aside_test::pg_url().unwrap_or_else(|e| panic!("{e}"));
    let options = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("not a PostgreSQL URL: {url}: {e}"));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("could not connect to PostgreSQL at {url}: {e}"));
    (url, pool)
}

/// A pool whose connections use `schema` as their search path.
async fn pg_pool(url: &str, schema: &str, size: u32) -> PgPool {
    let options = PgConnectOptions::from_str(url).unwrap().options([
        ("search_path", schema),
        // Durability, not visibility: every later transaction sees a commit
        // either way. It keeps writes quick, so loads and writes overlap.
        ("synchronous_commit", "off"),
    ]);
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("could not open a pool on schema {schema}: {e}"))
}

/// One run's schema: `rows`, the logs, and the workers' summaries. Dropped
/// by [`Schema::drop_now`], or by `Drop` when the test panicked first.
struct Schema {
    name: String,
    url: String,
    admin: PgPool,
}

impl Schema {
    async fn create(url: String, admin: PgPool) -> Self {
        let name = format!("aside_mp_{:016x}", rand::random::<u64>());
        // The name is ours (hex digits after a fixed prefix): nothing to inject.
        let ddl = format!(
            "CREATE SCHEMA {name};
             CREATE TABLE {name}.rows (id int PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO {name}.rows (id, version) SELECT g, 1 FROM generate_series(1, {ROWS}) g;
             CREATE TABLE {name}.commits (id int NOT NULL, version bigint NOT NULL,
                 applied_at bigint NOT NULL, worker int NOT NULL);
             CREATE TABLE {name}.reads (id int NOT NULL, version bigint NOT NULL,
                 started_at bigint NOT NULL, worker int NOT NULL);
             CREATE TABLE {name}.workers (worker int PRIMARY KEY, summary text NOT NULL);"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("could not create schema {name}: {e}"));
        Schema { name, url, admin }
    }

    async fn drop_now(mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("could not drop schema {}: {e}", self.name));
        self.name.clear();
    }
}

impl Drop for Schema {
    /// Reached when the test panicked: drop the schema anyway, on a thread
    /// with a runtime and a connection of its own (the test's runtime may be
    /// unwinding).
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let (name, url) = (std::mem::take(&mut self.name), self.url.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&url).await {
                    let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                    let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

// ---------------------------------------------------------------------------
// The parent: start Redis and the schema, run the workers, check the logs.
// ---------------------------------------------------------------------------

/// What a run found.
#[derive(Debug, Default)]
struct Findings {
    reads: u64,
    writes: u64,
    stale_reads: u64,
    /// Stale reads by worker.
    stale_by_worker: HashMap<i32, u64>,
    /// (row, version returned, newest version invalidated before the read,
    /// how long before the read that invalidation returned (µs), worker)
    examples: Vec<(i32, i64, i64, i64, i32)>,
    summaries: Vec<String>,
}

impl Findings {
    fn summary(&self, label: &str) -> String {
        format!(
            "{label}: {} stale reads of {} reads ({} applied writes) across {WORKERS} processes; \
             stale by worker {:?}; first stale reads (row, returned, invalidated, µs after, worker): \
             {:?}\n  {}",
            self.stale_reads,
            self.reads,
            self.writes,
            self.stale_by_worker,
            self.examples,
            self.summaries.join("\n  ")
        )
    }
}

async fn run(kind: Kind, seed: u64) -> Findings {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let redis = redis_server();
    let (pg_url, admin) = pg_admin().await;
    let schema = Schema::create(pg_url.clone(), admin).await;
    let start_at_ns = now_ns() + i64::try_from(STARTUP.as_nanos()).unwrap();
    let exe = std::env::current_exe().expect("the test binary's path");

    let mut children = JoinSet::new();
    for worker in 0..WORKERS {
        let config = WorkerConfig {
            kind,
            worker: i32::try_from(worker).unwrap(),
            pg_url: pg_url.clone(),
            schema: schema.name.clone(),
            redis_url: redis.url(),
            namespace: format!("mp{seed:x}"),
            start_at_ns,
            duration_ms: u64::try_from(DURATION.as_millis()).unwrap(),
            seed: seed << 8 | u64::from(worker),
        };
        let child = tokio::process::Command::new(&exe)
            .args([
                test_name(module_path!(), "worker").as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, serde_json::to_string(&config).unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropped on the timeout below (or a panic): killed.
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start worker {worker} ({exe:?}): {e}"));
        children.spawn(async move {
            let limit = STARTUP + DURATION + WORKER_GRACE;
            match tokio::time::timeout(limit, child.wait_with_output()).await {
                Ok(Ok(output)) => (worker, Some(output)),
                Ok(Err(e)) => panic!("waiting for worker {worker}: {e}"),
                Err(_) => (worker, None),
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = children.join_next().await {
        let (worker, output) = joined.unwrap();
        match output {
            None => failures.push(format!(
                "worker {worker} still running {:?} after the workload: killed",
                WORKER_GRACE
            )),
            // The workers' summaries are in the schema, and in the report.
            Some(out) if out.status.success() => {}
            Some(out) => failures.push(format!(
                "--- worker {worker} ({}) stdout:\n{}\n--- stderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "worker processes failed:\n{}",
        failures.join("\n")
    );

    let pool = pg_pool(&pg_url, &schema.name, 2).await;
    let findings = check(&pool).await;
    pool.close().await;
    schema.drop_now().await;
    drop(redis);
    findings
}

/// Every read against the commit log: stale when it returned a version
/// older than the newest version of its row whose invalidation had returned
/// (`applied_at`) before the read began (`started_at`).
async fn check(pool: &PgPool) -> Findings {
    let commits: Vec<(i32, i64, i64)> =
        sqlx::query_as("SELECT id, version, applied_at FROM commits ORDER BY id, applied_at")
            .fetch_all(pool)
            .await
            .unwrap();
    // By row: (applied_at, newest version applied at or before then).
    let mut applied: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    for (id, version, at) in &commits {
        let log = applied.entry(*id).or_default();
        let newest = log.last().map_or(*version, |&(_, v)| v.max(*version));
        log.push((*at, newest));
    }
    let reads: Vec<(i32, i64, i64, i32)> =
        sqlx::query_as("SELECT id, version, started_at, worker FROM reads")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut findings = Findings {
        reads: reads.len() as u64,
        writes: commits.len() as u64,
        ..Findings::default()
    };
    for (id, version, started_at, worker) in reads {
        let Some(log) = applied.get(&id) else {
            continue;
        };
        // Invalidations that returned strictly before the read began.
        let before = log.partition_point(|&(at, _)| at < started_at);
        if before == 0 {
            continue;
        }
        let (at, floor) = log[before - 1];
        if version < floor {
            findings.stale_reads += 1;
            *findings.stale_by_worker.entry(worker).or_default() += 1;
            if findings.examples.len() < 10 {
                findings
                    .examples
                    .push((id, version, floor, (started_at - at) / 1000, worker));
            }
        }
    }
    let summaries: Vec<(i32, String)> =
        sqlx::query_as("SELECT worker, summary FROM workers ORDER BY worker")
            .fetch_all(pool)
            .await
            .unwrap();
    findings.summaries = summaries
        .into_iter()
        .map(|(w, s)| format!("worker {w}: {s}"))
        .collect();
    findings
}

/// aside, with every invalidation scope, across processes: no read that
/// begins after an `Applied` invalidation returns what was loaded before it.
/// [`ASIDE_RUNS`] runs, each with a fresh Redis, schema and seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aside_across_processes_serves_no_read_older_than_an_applied_invalidation() {
    let mut stale = Vec::new();
    let mut all = Vec::new();
    for run_no in 0..ASIDE_RUNS {
        let label = format!("aside across processes, run {run_no}");
        let findings = run(Kind::Aside, 0xA51DE + run_no).await;
        let summary = findings.summary(&label);
        eprintln!("{summary}");
        assert!(
            findings.reads > 2_000 && findings.writes > 500,
            "too little traffic to mean anything: {summary}"
        );
        stale.push(findings.stale_reads);
        all.push(summary);
    }
    assert!(
        stale.iter().all(|&n| n == 0),
        "aside served versions older than an invalidation that had returned \
         (stale reads per run: {stale:?}):\n{}",
        all.join("\n")
    );
}

/// The control: textbook cache-aside on the same harness serves stale
/// reads, so a clean aside run above is a result and not a blind harness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_cache_aside_across_processes_serves_stale_reads() {
    let label = "naive cache-aside across processes";
    let findings = run(Kind::Naive, 0xBAD).await;
    eprintln!("{}", findings.summary(label));
    assert!(
        findings.reads > 2_000 && findings.writes > 500,
        "too little traffic to mean anything: {}",
        findings.summary(label)
    );
    assert!(
        findings.stale_reads > 0,
        "the naive cache served no stale read: the harness cannot fail. {}",
        findings.summary(label)
    );
}

// ---------------------------------------------------------------------------
// The worker: one process's readers and writers.
// ---------------------------------------------------------------------------

/// A worker process's body; returns at once unless [`WORKER_ENV`] is set
/// (so in a normal test run it passes without doing anything).
#[test]
fn worker() {
    let Ok(config) = std::env::var(WORKER_ENV) else {
        return;
    };
    let config: WorkerConfig = serde_json::from_str(&config).expect("a worker configuration");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(child::work(config));
}
