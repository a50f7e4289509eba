//! The workload of the eviction runs: the source of truth, the steady
//! readers and writers, the rounds aimed at eviction, the held loads and the
//! filler that keeps Redis evicting.

use super::*;

/// The source of truth: every row's committed version, and the newest
/// version whose invalidation has returned `Applied` (the floor: a read that
/// begins afterwards must return at least that).
#[derive(Debug, Default)]
pub struct Truth {
    pub rows: Mutex<HashMap<u32, (u64, u64)>>,
    /// Rows for rounds are allocated from here, past the steady rows.
    pub next_row: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub applied: AtomicU64,
    pub not_applied: AtomicU64,
    pub stale: Mutex<Vec<StaleRead>>,
}

/// A read that returned an older version than its floor.
#[derive(Debug, Clone)]
pub struct StaleRead {
    pub what: &'static str,
    pub row: u32,
    pub got: u64,
    pub floor: u64,
}

impl std::fmt::Display for StaleRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: row {} returned version {}, invalidated up to {}",
            self.what, self.row, self.got, self.floor
        )
    }
}

impl Truth {
    pub fn new() -> Self {
        Truth {
            next_row: AtomicU64::new(u64::from(STEADY_ROWS)),
            ..Truth::default()
        }
    }

    fn fresh_row(&self) -> u32 {
        u32::try_from(self.next_row.fetch_add(1, Ordering::Relaxed)).unwrap()
    }

    /// The committed version (rows start at version 1).
    fn version(&self, id: u32) -> u64 {
        self.rows.lock().unwrap().get(&id).map_or(1, |r| r.0)
    }

    /// Commits a write of `id`: its new version.
    fn commit(&self, id: u32) -> u64 {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut rows = self.rows.lock().unwrap();
        let row = rows.entry(id).or_insert((1, 1));
        row.0 += 1;
        row.0
    }

    /// The invalidation after the commit of `version` returned `Applied`.
    fn applied(&self, id: u32, version: u64) {
        let mut rows = self.rows.lock().unwrap();
        let row = rows.entry(id).or_insert((1, 1));
        row.1 = row.1.max(version);
    }

    fn floor(&self, id: u32) -> u64 {
        self.rows.lock().unwrap().get(&id).map_or(1, |r| r.1)
    }

    /// Checks what a read that began when the floor was `floor` returned.
    fn check(&self, what: &'static str, id: u32, floor: u64, got: Option<u64>) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let got = got.unwrap_or_else(|| panic!("{what}: row {id} read as absent"));
        if got < floor {
            self.stale.lock().unwrap().push(StaleRead {
                what,
                row: id,
                got,
                floor,
            });
        }
    }
}

pub fn key(id: u32) -> Key {
    Key::new("row").part(id)
}

/// A cache-aside read of `id` through `cache`, checked: the floor is taken
/// right before the call.
pub async fn read(truth: &Arc<Truth>, cache: &Cache, id: u32, tag: &str, what: &'static str) {
    let delay = Duration::from_millis(rand::random_range(0..=MAX_LOAD_DELAY_MS));
    let floor = truth.floor(id);
    let t = Arc::clone(truth);
    let got = cache
        .get_or_load_with(key(id), &EntryOptions::new().tag(tag), move || async move {
            let v = t.version(id);
            tokio::time::sleep(delay).await;
            Ok::<_, std::io::Error>(Some(v))
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: get_or_load(row {id}): {e}"));
    truth.check(what, id, floor, got);
}

/// Whether an invalidation was applied; counts the others.
pub fn is_applied(truth: &Truth, result: Result<Invalidation, aside::Error>) -> bool {
    match result {
        Ok(Invalidation::Applied) => {
            truth.applied.fetch_add(1, Ordering::Relaxed);
            true
        }
        Ok(_) => {
            truth.not_applied.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(e) => panic!("invalidation failed: {e}"),
    }
}

pub fn build(url: &str, namespace: &str) -> Cache {
    Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(5))
        .negative_ttl(None)
        .invalidation_marker_ttl(Duration::from_secs(3))
        .namespace_invalidation(true)
        .lease_ttl(Duration::from_millis(600))
        .lease_wait(Duration::from_secs(1))
        .backend(RedisBackend::new(url).unwrap())
        .build()
        .unwrap()
}

/// Keeps Redis evicting: large values nobody reads, through a cache of
/// their own.
pub async fn filler(url: String, deadline: Instant) -> u64 {
    let cache = Cache::builder()
        .namespace("fill")
        .ttl(Duration::from_secs(60))
        .compression(Compression::None)
        .backend(RedisBackend::new(&url).unwrap())
        .build()
        .unwrap();
    let mut rng = StdRng::from_os_rng();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let value: String = (0..FILLER_BYTES / 16)
            .map(|_| format!("{:016x}", rng.random::<u64>()))
            .collect();
        // A write Redis refuses (out of memory) is no concern of this test.
        let _ = cache.set(format!("f{n}"), value).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    n
}

/// Steady readers and writers over rows `0..STEADY_ROWS` in the steady
/// namespaces.
pub struct Steady {
    /// By namespace, its instances.
    pub caches: Vec<Vec<Cache>>,
}

impl Steady {
    pub fn new(url: &str) -> Self {
        Steady {
            caches: (0..NAMESPACES)
                .map(|ns| {
                    (0..INSTANCES)
                        .map(|_| build(url, &format!("s{ns}")))
                        .collect()
                })
                .collect(),
        }
    }

    fn instances(&self, id: u32) -> &[Cache] {
        &self.caches[(id % NAMESPACES) as usize]
    }

    fn any(&self, id: u32, rng: &mut StdRng) -> &Cache {
        let caches = self.instances(id);
        &caches[rng.random_range(0..caches.len())]
    }
}

pub fn steady_tag(id: u32) -> String {
    format!("t{}", id % TAGS)
}

pub fn pick(rng: &mut StdRng) -> u32 {
    if rng.random_bool(HOT_SHARE) {
        rng.random_range(0..HOT_ROWS)
    } else {
        rng.random_range(0..STEADY_ROWS)
    }
}

pub async fn steady_reader(truth: Arc<Truth>, steady: Arc<Steady>, seed: u64, deadline: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < deadline {
        let id = pick(&mut rng);
        let cache = steady.any(id, &mut rng).clone();
        read(&truth, &cache, id, &steady_tag(id), "steady read").await;
        tokio::task::yield_now().await;
    }
}

pub async fn steady_writer(truth: Arc<Truth>, steady: Arc<Steady>, seed: u64, deadline: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < deadline {
        let id = pick(&mut rng);
        // A second row of the same namespace, for the two-row writes.
        let other = (id + NAMESPACES * rng.random_range(1..STEADY_ROWS / NAMESPACES)) % STEADY_ROWS;
        let cache = steady.any(id, &mut rng).clone();
        let choice = rng.random_range(0..100);
        let ids: Vec<u32> = if (50..70).contains(&choice) {
            vec![id, other]
        } else {
            vec![id]
        };
        let versions: Vec<u64> = ids.iter().map(|&i| truth.commit(i)).collect();
        let result = match choice {
            0..40 => cache.invalidate(key(id)).await,
            40..50 => cache.invalidate_tag(steady_tag(id)).await,
            50..60 => cache.invalidate_many(ids.iter().map(|&i| key(i))).await,
            60..70 => {
                cache
                    .invalidate_tags(ids.iter().map(|&i| steady_tag(i)))
                    .await
            }
            _ => cache.invalidate_namespace().await,
        };
        if is_applied(&truth, result) {
            for (&i, &v) in ids.iter().zip(&versions) {
                truth.applied(i, v);
            }
            // Read the rows again at once, through every instance.
            for &i in &ids {
                for c in steady.instances(i) {
                    read(&truth, c, i, &steady_tag(i), "read after a steady write").await;
                }
            }
        }
        let pause = rng.random_range(0..=8);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// What a round invalidates.
#[derive(Debug, Clone, Copy)]
pub enum RoundScope {
    /// Each row carries a tag of its own; the round invalidates all of them
    /// at once (`invalidate_tags`).
    Tags,
    /// The round's namespace.
    Namespace,
}

/// Rounds in fresh namespaces: load with every counter absent, invalidate,
/// let eviction run, read, write, invalidate, read.
pub async fn rounds(truth: Arc<Truth>, url: String, seed: u64, deadline: Instant) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut round = 0u64;
    while Instant::now() < deadline {
        let namespace = format!("r{seed:x}x{round}");
        let (x, y) = (build(&url, &namespace), build(&url, &namespace));
        let scope = if round.is_multiple_of(2) {
            RoundScope::Tags
        } else {
            RoundScope::Namespace
        };
        let rows: Vec<u32> = (0..ROUND_ROWS).map(|_| truth.fresh_row()).collect();
        let tag = |id: u32| format!("own{id}");
        // Loaded while the counters are absent.
        for &id in &rows {
            read(&truth, &x, id, &tag(id), "round read").await;
        }
        for cycle in 0..3u32 {
            let versions: Vec<u64> = rows.iter().map(|&id| truth.commit(id)).collect();
            let result = match scope {
                RoundScope::Tags => y.invalidate_tags(rows.iter().map(|&id| tag(id))).await,
                RoundScope::Namespace => y.invalidate_namespace().await,
            };
            if is_applied(&truth, result) {
                for (&id, &v) in rows.iter().zip(&versions) {
                    truth.applied(id, v);
                }
            }
            // Half the rows are read at once (and reloaded); the others are
            // left as they were loaded, for after the eviction.
            for &id in rows.iter().step_by(2) {
                let c = if cycle.is_multiple_of(2) { &x } else { &y };
                read(&truth, c, id, &tag(id), "round read after invalidation").await;
            }
            let pause = rng.random_range(100..=MAX_ROUND_PAUSE_MS);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            for &id in &rows {
                read(&truth, &x, id, &tag(id), "round read after eviction").await;
                read(&truth, &y, id, &tag(id), "round read after eviction").await;
            }
        }
        round += 1;
    }
    round
}

/// Loads held open across a key invalidation (from another instance) and a
/// stretch of eviction; then every instance reads the key.
pub async fn held_loads(truth: Arc<Truth>, url: String, seed: u64, deadline: Instant) -> u64 {
    let mut round = 0u64;
    while Instant::now() < deadline {
        let namespace = format!("h{seed:x}x{round}");
        let (x, y) = (build(&url, &namespace), build(&url, &namespace));
        let mut held = JoinSet::new();
        for _ in 0..ROUND_ROWS {
            let id = truth.fresh_row();
            let (truth, x, y) = (Arc::clone(&truth), x.clone(), y.clone());
            held.spawn(async move {
                let (started_tx, started_rx) = oneshot::channel::<()>();
                let (go_tx, go_rx) = oneshot::channel::<()>();
                let floor = truth.floor(id);
                let t = Arc::clone(&truth);
                let load = tokio::spawn({
                    let x = x.clone();
                    async move {
                        x.get_or_load_with(
                            key(id),
                            &EntryOptions::new().tag("held"),
                            move || async move {
                                let v = t.version(id);
                                let _ = started_tx.send(());
                                let _ = go_rx.await;
                                Ok::<_, std::io::Error>(Some(v))
                            },
                        )
                        .await
                        .unwrap()
                    }
                });
                // The load has read the row: now the write and its
                // invalidation, from the other instance.
                let _ = started_rx.await;
                let v = truth.commit(id);
                if is_applied(&truth, y.invalidate(key(id)).await) {
                    truth.applied(id, v);
                }
                tokio::time::sleep(HOLD).await;
                let _ = go_tx.send(());
                // That load began before the write: any version will do.
                truth.check("held load", id, floor, load.await.unwrap());
                for c in [&x, &y, &x] {
                    let floor = truth.floor(id);
                    let got = c.get::<u64>(key(id)).await.unwrap_or(None);
                    if got.is_some() {
                        truth.check("get after a held load", id, floor, got);
                    }
                    read(&truth, c, id, "held", "read after a held load").await;
                }
            });
        }
        while let Some(done) = held.join_next().await {
            done.unwrap();
        }
        round += 1;
    }
    round
}

pub async fn evicted_keys(url: &str) -> u64 {
    stat(&mut raw_url(url).await, "evicted_keys")
        .await
        .expect("INFO stats has evicted_keys")
}
