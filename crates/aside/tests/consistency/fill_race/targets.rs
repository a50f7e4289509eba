//! The caches under test: aside (invalidating the key, a tag or the whole
//! namespace), and textbook cache-aside written naively (get; on a miss load
//! and store unconditionally; writers delete).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::{Cache, EntryOptions, Invalidation, Key};
use redis::aio::MultiplexedConnection;

use super::harness::{Load, Target};

fn key(id: i32) -> Key {
    Key::new("row").part(id)
}

/// What an aside target's writers invalidate after their commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `invalidate(key)`: the row's own key.
    Key,
    /// `invalidate_tag("group:<id % 4>")`; reads tag their entries with it.
    /// A quarter of the rows go with each write, and the fill race now runs
    /// through the tag's version counter instead of the key's generation.
    Tag,
    /// `invalidate_namespace()`: every entry goes with each write. The cache
    /// must be built with `namespace_invalidation(true)`.
    Namespace,
}

/// The tag of row `id` under [`Scope::Tag`].
fn group(id: i32) -> String {
    format!("group:{}", id % 4)
}

/// aside's `get_or_load_with` and an invalidation of `scope`, on whatever
/// backend the cache has.
#[derive(Debug)]
pub struct Aside {
    pub cache: Cache,
    pub scope: Scope,
    /// Invalidations that could not reach the backend and were queued.
    pub queued: AtomicU64,
}

impl Aside {
    /// Writers invalidate the row's key.
    pub fn new(cache: Cache) -> Self {
        Self::with_scope(cache, Scope::Key)
    }

    pub fn with_scope(cache: Cache, scope: Scope) -> Self {
        Aside {
            cache,
            scope,
            queued: AtomicU64::new(0),
        }
    }

    /// The options every read of row `id` uses: its group tag under
    /// [`Scope::Tag`], none otherwise (`get_or_load` is `get_or_load_with`
    /// and no options).
    fn options(&self, id: i32) -> EntryOptions {
        match self.scope {
            Scope::Tag => EntryOptions::new().tag(group(id)),
            Scope::Key | Scope::Namespace => EntryOptions::new(),
        }
    }
}

/// Long enough for the queued invalidations of a run to be retried after an
/// outage (the retry backs off to 1.6 s by default), short enough that a
/// retry that never lands fails the test instead of hanging it.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

impl Target for Aside {
    async fn read(&self, id: i32, load: Load) -> Option<i64> {
        self.cache
            .get_or_load_with(key(id), &self.options(id), move || load.run())
            .await
            // Only the loader can fail `get_or_load`, and the loader here is
            // a query on a healthy database: an error is a test failure.
            .unwrap_or_else(|e| panic!("get_or_load(row {id}): {e}"))
    }

    async fn invalidate(&self, id: i32) {
        let result = match self.scope {
            Scope::Key => self.cache.invalidate(key(id)).await,
            Scope::Tag => self.cache.invalidate_tag(group(id)).await,
            Scope::Namespace => self.cache.invalidate_namespace().await,
        };
        match result {
            Ok(Invalidation::Applied) => {}
            Ok(_) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("invalidation of row {id} ({:?}): {e}", self.scope),
        }
    }

    async fn cached(&self, id: i32) -> Option<i64> {
        // A plain `get` (what any other reader of the key would see) checks
        // no less than a read with the tag options: an entry records the tag
        // versions it was loaded under, and `get` fetches those counters and
        // compares them (and the namespace version, when the cache has
        // namespace invalidation on), so an entry loaded before an
        // `invalidate_tag` of its group reads as nothing here too.
        //
        // Right after an outage the cache may still count the backend as
        // down for a moment; `get` says so with an error (it has no loader to
        // fall back on). Ask again until it answers.
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            match self.cache.get::<i64>(key(id)).await {
                Ok(v) => return v,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("get(row {id}) kept failing: {e}"),
            }
        }
    }

    async fn settle(&self) {
        // A queued invalidation makes this process bypass the key (so `get`
        // would say "nothing cached" whatever the backend holds) until the
        // retry reaches the backend: only then does the comparison see what
        // other processes would read.
        let deadline = Instant::now() + SETTLE_WITHIN;
        while self.cache.pending_invalidations() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} queued invalidations were not applied within {SETTLE_WITHIN:?}",
                self.cache.pending_invalidations()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Naive cache-aside on Redis: `GET`; on a miss load, then `SET ... PX`
/// whatever was loaded; writers `DEL`. Nothing stops a load that read the
/// old row from storing it after the writer's `DEL`.
#[derive(Debug)]
pub struct NaiveRedis {
    conn: MultiplexedConnection,
    prefix: String,
}

impl NaiveRedis {
    /// Keys are `<prefix>:<id>`: a prefix per run keeps runs apart.
    pub async fn connect(url: &str, prefix: String) -> Self {
        let conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        NaiveRedis { conn, prefix }
    }

    fn key(&self, id: i32) -> String {
        format!("{}:{id}", self.prefix)
    }

    async fn get(&self, id: i32) -> Option<i64> {
        redis::cmd("GET")
            .arg(self.key(id))
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }
}

impl Target for NaiveRedis {
    async fn read(&self, id: i32, load: Load) -> Option<i64> {
        if let Some(v) = self.get(id).await {
            return Some(v);
        }
        let loaded = load.run().await.unwrap();
        if let Some(v) = loaded {
            redis::cmd("SET")
                .arg(self.key(id))
                .arg(v)
                .arg("PX")
                .arg(60_000)
                .query_async::<()>(&mut self.conn.clone())
                .await
                .unwrap();
        }
        loaded
    }

    async fn invalidate(&self, id: i32) {
        redis::cmd("DEL")
            .arg(self.key(id))
            .query_async::<()>(&mut self.conn.clone())
            .await
            .unwrap();
    }

    async fn cached(&self, id: i32) -> Option<i64> {
        self.get(id).await
    }

    async fn settle(&self) {}
}

/// Naive cache-aside in process: a map under a mutex; get, load, insert;
/// writers remove.
#[derive(Debug, Default)]
pub struct NaiveMemory {
    map: Mutex<HashMap<i32, i64>>,
}

impl NaiveMemory {
    fn lookup(&self, id: i32) -> Option<i64> {
        self.map.lock().unwrap().get(&id).copied()
    }
}

impl Target for NaiveMemory {
    async fn read(&self, id: i32, load: Load) -> Option<i64> {
        if let Some(v) = self.lookup(id) {
            return Some(v);
        }
        let loaded = load.run().await.unwrap();
        if let Some(v) = loaded {
            self.map.lock().unwrap().insert(id, v);
        }
        loaded
    }

    async fn invalidate(&self, id: i32) {
        self.map.lock().unwrap().remove(&id);
    }

    async fn cached(&self, id: i32) -> Option<i64> {
        self.lookup(id)
    }

    async fn settle(&self) {}
}
