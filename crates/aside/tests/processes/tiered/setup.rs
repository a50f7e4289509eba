//! What the parent and the children share: keys and their tags, the
//! run's keys in Redis, the configuration and results they exchange, and
//! how an instance is built and reads.

use super::*;

pub fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_nanos()).expect("before 2262")
}

pub fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

pub fn key(i: usize) -> String {
    format!("k{i}")
}

pub fn group(i: usize) -> String {
    format!("g{}", i % GROUPS)
}

pub fn options(i: usize) -> EntryOptions {
    EntryOptions::new().tag(group(i))
}

/// Redis keys of one run's shared state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub prefix: String,
}

impl Run {
    pub fn new() -> Self {
        Run {
            prefix: format!("tp{:08x}", rand::random::<u32>()),
        }
    }
    pub fn truth(&self, i: usize) -> String {
        format!("{}:truth:{i}", self.prefix)
    }
    pub fn ready(&self, name: &str) -> String {
        format!("{}:ready:{name}", self.prefix)
    }
    pub fn stats(&self, name: &str) -> String {
        format!("{}:stats:{name}", self.prefix)
    }
    /// Set (to the wall-clock ns it began) while a child writer's write
    /// runs.
    pub fn busy(&self, name: &str) -> String {
        format!("{}:busy:{name}", self.prefix)
    }
    pub fn stop(&self) -> String {
        format!("{}:stop", self.prefix)
    }
    pub fn namespace(&self) -> String {
        self.prefix.clone()
    }
}

/// What a child is told, through [`WORKER_ENV`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub name: String,
    pub run: Run,
    /// Entries and truth.
    pub data_url: String,
    /// The backplane's Redis (perhaps through a proxy); `None`: no
    /// backplane (the control).
    pub events_url: Option<String>,
    pub max_l1_age_ms: u64,
    /// Readers that never yield while their reads are L1 hits (a loop over
    /// cached items, as CPU-bound code does), with the stop and the stats
    /// on a thread of their own (the runtime is theirs).
    #[serde(default)]
    pub greedy: bool,
    /// Threads that spin for the whole run: a loaded machine.
    #[serde(default)]
    pub hog_threads: usize,
    /// Strict invalidation (the defaults of [`Strict`]).
    #[serde(default)]
    pub strict: bool,
    /// No `max_staleness` (so that only strict invalidation guards the
    /// copies).
    #[serde(default)]
    pub unbounded: bool,
    /// A writer, not a reader: random writes until stopped (or killed),
    /// each one flagged at [`Run::busy`] while it runs.
    #[serde(default)]
    pub writer: bool,
}

/// A child's counters at one instant (`at`: wall-clock ns).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Report {
    pub at: i64,
    pub l1_hits: u64,
    pub l1_misses: u64,
    pub received: u64,
    pub gaps: u64,
}

pub use aside_test::staleness::{ReadRun, Write};

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerResult {
    pub name: String,
    pub reads: u64,
    /// Time spent in reads, and the longest one (ns).
    pub read_ns: i64,
    pub max_read_ns: i64,
    pub runs: Vec<ReadRun>,
    pub stats: Report,
}

// ---------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------

pub fn build(
    run: &Run,
    data_url: &str,
    events_url: Option<&str>,
    max_l1_age: Duration,
) -> (Cache, TieredBackend) {
    build_with(run, data_url, events_url, max_l1_age, None, false)
}

/// [`build`], with strict invalidation when given its settings.
pub fn build_with(
    run: &Run,
    data_url: &str,
    events_url: Option<&str>,
    max_l1_age: Duration,
    strict: Option<Strict>,
    unbounded: bool,
) -> (Cache, TieredBackend) {
    let mut builder = TieredBackend::builder(RedisBackend::new(data_url).unwrap())
        .l1_max_entries(10_000)
        .max_l1_age(max_l1_age);
    if let Some(strict) = strict {
        builder = builder.strict(strict);
    }
    if unbounded {
        builder = builder.max_staleness(None);
    }
    if let Some(url) = events_url {
        let events = RedisBackend::new(url).unwrap();
        builder = builder.backplane(events.backplane("aside:events").unwrap());
    }
    let backend = builder.build().unwrap();
    let cache = Cache::builder()
        .namespace(run.namespace())
        .ttl(Duration::from_secs(60))
        .namespace_invalidation(true)
        .backend(backend.clone())
        .build()
        .unwrap();
    (cache, backend)
}

/// Waits until the backplane is subscribed (its first gap is the connect).
pub use aside_test::fixtures::until_live;

pub async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `get_or_load_with` of key `i`; the loader reads the truth counter (and
/// sometimes waits a millisecond, so that loads and writes overlap).
pub async fn read(cache: &Cache, conn: &MultiplexedConnection, run: &Run, i: usize) -> u64 {
    let (mut conn, truth) = (conn.clone(), run.truth(i));
    let got: Option<u64> = cache
        .get_or_load_with(key(i), &options(i), move || async move {
            let v: Option<u64> = redis::cmd("GET").arg(truth).query_async(&mut conn).await?;
            if rand::rng().random_ratio(1, 4) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, redis::RedisError>(v)
        })
        .await
        .unwrap();
    got.expect("every key has a truth counter")
}

pub async fn init_truth(conn: &mut MultiplexedConnection, run: &Run) {
    for i in 0..KEYS {
        let _: () = redis::cmd("SET")
            .arg(run.truth(i))
            .arg(1)
            .query_async(conn)
            .await
            .unwrap();
    }
}
