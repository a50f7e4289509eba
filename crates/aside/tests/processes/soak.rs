//! A bounded soak: three OS processes run many tasks of mixed reads,
//! writes, tag invalidations and batches against one Redis for
//! [`DEFAULT_SECS`] seconds (`ASIDE_SOAK_SECS` for a longer run). Each
//! process samples what could leak (loads in flight, queued invalidations,
//! fill watches, live tokio tasks) and the parent samples Redis's
//! connections and key count. They must not grow, and no read may return a
//! version older than one whose invalidation was applied before the read
//! began.
//!
//! The "database" is a counter per row in Redis, under keys aside never
//! uses: a writer increments it, invalidates, and then records the version
//! as applied; a reader notes the applied version before reading and
//! checks the version it got. In the writer's own process the version
//! counts as applied at once; for the other process, [`PROPAGATION`] later
//! (the two-level cache hears of another instance's writes through the
//! backplane: a bounded delay, measured at well under a millisecond on
//! loopback). Two processes use the two-level backend and write; the third
//! uses the Redis backend alone and only reads: a writer without the
//! backplane would not evict the others' copies (they would live up to
//! `max_l1_age`; see `docs/tiered.md`), so every writer here has it.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::backend::RedisBackend;
use aside::backend::TieredBackend;
use aside::{Cache, EntryOptions, Key};
use aside_test::fixtures::{redis_server, test_name};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const DEFAULT_SECS: u64 = 30;
const WORKER_ENV: &str = "ASIDE_SOAK_WORKER";
const ROWS: u64 = 300;
const TASKS: u64 = 24;
/// Samples per process, evenly spread over the run.
const SAMPLES: usize = 6;
/// How long another process may still serve a copy after an applied write.
const PROPAGATION: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize)]
struct Config {
    redis_url: String,
    tiered: bool,
    writes: bool,
    secs: u64,
    seed: u64,
}

/// What a worker saw, printed as one JSON line.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Report {
    reads: u64,
    writes: u64,
    stale: u64,
    errors: u64,
    /// Per sample: loads in flight, queued invalidations, fill watches,
    /// live tokio tasks.
    samples: Vec<[usize; 4]>,
    /// The same, once the workload stopped and settled.
    settled: [usize; 4],
}

fn secs() -> u64 {
    std::env::var("ASIDE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_soak_without_growth_or_stale_reads() {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let redis = redis_server();
    let secs = secs();
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for (i, (tiered, writes)) in [(true, true), (true, true), (false, false)]
        .into_iter()
        .enumerate()
    {
        let config = Config {
            redis_url: redis.url(),
            tiered,
            writes,
            secs,
            seed: 0x50a6 + i as u64,
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
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
    }
    // Redis's view: connections and keys, sampled through the run.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut redis_samples = Vec::new();
    for _ in 0..SAMPLES {
        tokio::time::sleep(Duration::from_secs(secs) / SAMPLES as u32).await;
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut conn)
            .await
            .unwrap();
        let clients: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        redis_samples.push((clients, keys));
    }
    let mut reports = Vec::new();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(secs + 60), child.wait_with_output())
            .await
            .expect("a worker hung")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("SOAK ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no report in: {stdout}"));
        reports.push(serde_json::from_str::<Report>(line).unwrap());
    }
    eprintln!("redis (clients, keys) per sample: {redis_samples:?}");
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "worker {i}: {} reads, {} writes, {} stale, {} errors; samples {:?}; settled {:?}",
            r.reads, r.writes, r.stale, r.errors, r.samples, r.settled
        );
        assert!(r.reads > 1_000, "worker {i} did little: {r:?}");
        assert!(i == 2 || r.writes > 100, "worker {i} wrote little: {r:?}");
        assert_eq!(
            r.stale, 0,
            "worker {i} read data older than an applied write"
        );
        assert_eq!(r.errors, 0, "worker {i}: {r:?}");
        // Settled: nothing in flight, queued or watched; tasks back to a
        // handful (subscribers, the publisher, the retry worker).
        assert_eq!(r.settled[..3], [0, 0, 0], "worker {i} leaks: {r:?}");
        let first_half_tasks = r.samples[..SAMPLES / 2].iter().map(|s| s[3]).max().unwrap();
        let second_half_tasks = r.samples[SAMPLES / 2..].iter().map(|s| s[3]).max().unwrap();
        assert!(
            second_half_tasks <= first_half_tasks + TASKS as usize,
            "worker {i}: live tasks grow: {:?}",
            r.samples
        );
        assert!(r.settled[3] <= 16, "worker {i}: tasks left: {r:?}");
        assert!(
            r.samples.iter().all(|s| s[2] <= TASKS as usize),
            "worker {i}: fill watches beyond one per waiting task: {r:?}"
        );
    }
    // Connections: a few per process, not one per operation.
    let clients: Vec<u64> = redis_samples.iter().map(|s| s.0).collect();
    assert!(
        clients.iter().all(|&c| c <= 20),
        "connections grow: {clients:?}"
    );
    // Keys: entries, tokens and markers of at most ROWS rows (plus the
    // "database"), however long the run.
    let keys: Vec<u64> = redis_samples.iter().map(|s| s.1).collect();
    assert!(
        keys.iter().all(|&k| k <= ROWS * 8 + 16),
        "keys grow: {keys:?}"
    );
}

/// A worker process (a no-op unless started by the test above).
#[test]
fn worker() {
    let Ok(config) = std::env::var(WORKER_ENV) else {
        return;
    };
    let config: Config = serde_json::from_str(&config).unwrap();
    let report = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(work(config));
    println!("SOAK {}", serde_json::to_string(&report).unwrap());
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    /// Versions applied by this process, per row.
    local: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

impl Counts {
    fn local_floor(&self, id: u64) -> u64 {
        self.local.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

async fn work(config: Config) -> Report {
    let redis = RedisBackend::new(&config.redis_url).unwrap();
    let watches = redis.clone();
    let builder = Cache::builder()
        .namespace("soak")
        .ttl(Duration::from_secs(5))
        .invalidation_marker_ttl(Duration::from_secs(10));
    let cache = if config.tiered {
        let backplane = redis.backplane("aside:events").unwrap();
        let tiered = TieredBackend::builder(redis)
            .backplane(backplane)
            .max_l1_age(Duration::from_secs(2))
            .build()
            .unwrap();
        builder.backend(tiered).build().unwrap()
    } else {
        builder.backend(redis).build().unwrap()
    };
    let db = redis::Client::open(config.redis_url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(config.secs);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (cache, db, counts) = (cache.clone(), db.clone(), counts.clone());
        let seed = config.seed << 8 | t;
        let writes = config.writes;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while Instant::now() < deadline {
                let id = rng.random_range(0..ROWS);
                match rng.random_range(0..100) {
                    0..=4 if writes => write(&cache, &db, id, &counts).await,
                    5..=9 => batch(&cache, &db, &mut rng, &counts).await,
                    _ => read(&cache, &db, id, &counts).await,
                }
            }
        }));
    }
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        tokio::time::sleep(Duration::from_secs(config.secs) / SAMPLES as u32).await;
        samples.push(sample(&cache, &watches));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Let refreshes, renewals and the retry worker finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cache
        .flush_invalidations(Duration::from_secs(5))
        .await
        .unwrap();
    Report {
        reads: counts.reads.load(Ordering::Relaxed),
        writes: counts.writes.load(Ordering::Relaxed),
        stale: counts.stale.load(Ordering::Relaxed),
        errors: counts.errors.load(Ordering::Relaxed),
        samples,
        settled: sample(&cache, &watches),
    }
}

fn sample(cache: &Cache, redis: &RedisBackend) -> [usize; 4] {
    [
        cache.loads_in_flight(),
        cache.pending_invalidations(),
        redis.fill_watches(),
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    ]
}

fn tag(id: u64) -> String {
    format!("g{}", id % 10)
}

async fn applied(db: &redis::aio::ConnectionManager, id: u64) -> u64 {
    let v: Option<u64> = redis::cmd("GET")
        .arg(format!("truth:applied:{id}"))
        .query_async(&mut db.clone())
        .await
        .unwrap();
    v.unwrap_or(0)
}

async fn current(db: &redis::aio::ConnectionManager, id: u64) -> u64 {
    let v: Option<u64> = redis::cmd("GET")
        .arg(format!("truth:row:{id}"))
        .query_async(&mut db.clone())
        .await
        .unwrap();
    v.unwrap_or(0)
}

async fn read(cache: &Cache, db: &redis::aio::ConnectionManager, id: u64, counts: &Counts) {
    let floor = applied(db, id).await.max(counts.local_floor(id));
    let options = EntryOptions::new().tag(tag(id));
    let db2 = db.clone();
    let got = cache
        .get_or_load_with(Key::new("row").part(id), &options, move || async move {
            Ok::<_, std::io::Error>(Some(current(&db2, id).await))
        })
        .await;
    counts.reads.fetch_add(1, Ordering::Relaxed);
    match got {
        Ok(Some(v)) if v < floor => {
            counts.stale.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("read {id}: {e}");
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn batch(
    cache: &Cache,
    db: &redis::aio::ConnectionManager,
    rng: &mut rand::rngs::StdRng,
    counts: &Counts,
) {
    // Rows of one tag, read with it (an entry filled without the tag would
    // rightly survive that tag's invalidation).
    let group = rng.random_range(0..10);
    let ids: Vec<u64> = (0..8)
        .map(|_| rng.random_range(0..ROWS / 10) * 10 + group)
        .collect();
    let options = EntryOptions::new().tag(tag(group));
    let mut floors = Vec::new();
    for &id in &ids {
        floors.push(applied(db, id).await.max(counts.local_floor(id)));
    }
    let keys: Vec<String> = ids.iter().map(|id| format!("row:{id}")).collect();
    let db2 = db.clone();
    let got: Result<Vec<Option<u64>>, _> = cache
        .get_many_or_load_with(keys, &options, move |misses| async move {
            let mut found = std::collections::HashMap::new();
            for key in misses {
                let id: u64 = key.trim_start_matches("row:").parse().unwrap();
                found.insert(key, current(&db2, id).await);
            }
            Ok::<_, std::io::Error>(found)
        })
        .await;
    counts.reads.fetch_add(ids.len() as u64, Ordering::Relaxed);
    match got {
        Ok(values) => {
            for (v, floor) in values.into_iter().zip(floors) {
                if v.is_some_and(|v| v < floor) {
                    counts.stale.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(e) => {
            eprintln!("batch: {e}");
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Commit a new version, invalidate (the key, or its tag), then record the
/// version as applied: at once for this process, [`PROPAGATION`] later for
/// the others.
async fn write(cache: &Cache, db: &redis::aio::ConnectionManager, id: u64, counts: &Counts) {
    let version: u64 = redis::cmd("INCR")
        .arg(format!("truth:row:{id}"))
        .query_async(&mut db.clone())
        .await
        .unwrap();
    // Batches name the row `row:<id>`; single reads use Key::new("row").part(id):
    // the same backend key, so one invalidation covers both.
    let done = if version.is_multiple_of(3) {
        cache.invalidate_tag(tag(id)).await
    } else {
        cache.invalidate(Key::new("row").part(id)).await
    };
    match done {
        Ok(d) if d.is_applied() => {
            {
                let mut local = counts.local.lock().unwrap();
                let v = local.entry(id).or_default();
                *v = (*v).max(version);
            }
            tokio::time::sleep(PROPAGATION).await;
            let _: () = redis::Script::new(
                "local c = tonumber(redis.call('GET', KEYS[1]) or '0') \
                 if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end",
            )
            .key(format!("truth:applied:{id}"))
            .arg(version)
            .invoke_async(&mut db.clone())
            .await
            .unwrap();
            counts.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            counts.writes.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            eprintln!("write {id}: {e}");
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
