//! A worker process's readers and writers (the body of the `worker` test).

use super::*;

/// The cache a worker reads and invalidates through.
enum Target {
    Aside(Cache),
    Naive {
        conn: MultiplexedConnection,
        prefix: String,
    },
}

/// What a writer invalidates after its commit.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// `invalidate(key)`, or `invalidate_many(keys)` for a write of two rows.
    Keys,
    /// `invalidate_tag(tag)`, or `invalidate_tags(tags)` for two rows.
    Tags,
    /// `invalidate_namespace()`.
    Namespace,
}

fn key(id: i32) -> Key {
    Key::new("row").part(id)
}

fn group(id: i32) -> String {
    if id <= HOT_ROWS {
        "hot".to_owned()
    } else {
        format!("c{}", id % COLD_TAGS)
    }
}

impl Target {
    async fn new(config: &WorkerConfig) -> Self {
        match config.kind {
            Kind::Aside => Target::Aside(
                Cache::builder()
                    .namespace(config.namespace.clone())
                    .ttl(TTL)
                    // Negative entries are not expected (every row exists),
                    // but their TTL counts in how long tag and namespace
                    // counters are kept: keep it short too.
                    .negative_ttl(Some(TTL))
                    .invalidation_marker_ttl(MARKER_TTL)
                    .namespace_invalidation(true)
                    .leases(true)
                    .lease_ttl(LEASE_TTL)
                    .lease_wait(LEASE_WAIT)
                    .backend(RedisBackend::new(&config.redis_url).unwrap())
                    .build()
                    .unwrap(),
            ),
            Kind::Naive => Target::Naive {
                conn: redis::Client::open(config.redis_url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
                prefix: config.namespace.clone(),
            },
        }
    }

    /// A cache-aside read of row `id` through a loader that `SELECT`s it and
    /// then waits `delay`.
    async fn read(&self, pool: &PgPool, id: i32, delay: Duration) -> i64 {
        let load = {
            let pool = pool.clone();
            move || async move {
                let version: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM rows WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&pool)
                        .await?;
                // The connection is back in the pool: only the race remains.
                tokio::time::sleep(delay).await;
                Ok::<_, sqlx::Error>(version)
            }
        };
        let got = match self {
            Target::Aside(cache) => cache
                .get_or_load_with(key(id), &EntryOptions::new().tag(group(id)), load)
                .await
                .unwrap_or_else(|e| panic!("get_or_load(row {id}): {e}")),
            Target::Naive { conn, prefix } => {
                let k = format!("{prefix}:row:{id}");
                let cached: Option<i64> = redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn.clone())
                    .await
                    .unwrap();
                match cached {
                    Some(v) => Some(v),
                    None => {
                        let loaded = load().await.unwrap();
                        if let Some(v) = loaded {
                            redis::cmd("SET")
                                .arg(&k)
                                .arg(v)
                                .arg("PX")
                                .arg(u64::try_from(TTL.as_millis()).unwrap())
                                .query_async::<()>(&mut conn.clone())
                                .await
                                .unwrap();
                        }
                        loaded
                    }
                }
            }
        };
        got.unwrap_or_else(|| panic!("row {id} read as absent"))
    }

    /// Invalidates after the write of rows `ids` committed: whether it was
    /// applied (not queued).
    async fn invalidate(&self, ids: &[i32], scope: Scope) -> bool {
        match self {
            Target::Aside(cache) => {
                let result = match (scope, ids) {
                    (Scope::Keys, [id]) => cache.invalidate(key(*id)).await,
                    (Scope::Keys, ids) => {
                        cache.invalidate_many(ids.iter().map(|&id| key(id))).await
                    }
                    (Scope::Tags, [id]) => cache.invalidate_tag(group(*id)).await,
                    (Scope::Tags, ids) => {
                        cache.invalidate_tags(ids.iter().map(|&id| group(id))).await
                    }
                    (Scope::Namespace, _) => cache.invalidate_namespace().await,
                };
                match result {
                    Ok(Invalidation::Applied) => true,
                    Ok(_) => false,
                    Err(e) => panic!("invalidation of rows {ids:?} ({scope:?}): {e}"),
                }
            }
            // Textbook: delete the keys, whatever the scope.
            Target::Naive { conn, prefix } => {
                let mut del = redis::cmd("DEL");
                for id in ids {
                    del.arg(format!("{prefix}:row:{id}"));
                }
                del.query_async::<()>(&mut conn.clone()).await.unwrap();
                true
            }
        }
    }

    /// A plain `get` (no loader) of row `id`: what any reader of the key
    /// would be served.
    async fn get(&self, id: i32) -> Option<i64> {
        match self {
            // An error here means the backend is marked down: nothing served.
            Target::Aside(cache) => cache.get::<i64>(key(id)).await.ok().flatten(),
            Target::Naive { conn, prefix } => redis::cmd("GET")
                .arg(format!("{prefix}:row:{id}"))
                .query_async(&mut conn.clone())
                .await
                .unwrap(),
        }
    }

    fn summary(&self) -> String {
        match self {
            Target::Aside(cache) => {
                let s = cache.stats();
                format!(
                    "aside: {} hits, {} misses, {} coalesced, {} loads, {} fills stored, \
                     {} stale fills dropped, {} dependency misses, {} lease waits \
                     ({} timed out), {} invalidations queued, {} backend errors, \
                     {} backend timeouts",
                    s.hits,
                    s.misses,
                    s.joined,
                    s.loads,
                    s.sets,
                    s.stale_fills_rejected,
                    s.dependency_misses,
                    s.lease_waits,
                    s.lease_timeouts,
                    s.invalidations_queued,
                    s.backend_errors,
                    s.backend_timeouts
                )
            }
            Target::Naive { .. } => "naive".to_owned(),
        }
    }
}

/// One task's log: reads `(row, version, started_at)` or applied writes
/// `(row, version, applied_at)`.
#[derive(Debug, Default)]
struct Log {
    reads: Vec<(i32, i64, i64)>,
    commits: Vec<(i32, i64, i64)>,
    queued: u64,
}

pub async fn work(config: WorkerConfig) {
    let pool = pg_pool(
        &config.pg_url,
        &config.schema,
        u32::try_from(READERS + WRITERS + 2).unwrap(),
    )
    .await;
    let target = Arc::new(Target::new(&config).await);
    let wait = config.start_at_ns - now_ns();
    if wait > 0 {
        tokio::time::sleep(Duration::from_nanos(u64::try_from(wait).unwrap())).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.duration_ms);

    let mut tasks = JoinSet::new();
    // Readers, key and tag writers, and one namespace writer.
    for task in 0..READERS + WRITERS + 1 {
        let (target, pool) = (Arc::clone(&target), pool.clone());
        let mut rng = StdRng::seed_from_u64(config.seed << 8 | task as u64);
        let role = if task < READERS {
            Role::Reader
        } else if task < READERS + WRITERS {
            Role::Writer
        } else {
            Role::NamespaceWriter
        };
        tasks.spawn(async move {
            let mut log = Log::default();
            while tokio::time::Instant::now() < deadline {
                let id = pick(&mut rng);
                match role {
                    Role::Reader => {
                        let delay = Duration::from_millis(rng.random_range(0..=MAX_LOAD_DELAY_MS));
                        let plain_get = rng.random_bool(PLAIN_GET_SHARE);
                        let started_at = now_ns();
                        let version = if plain_get {
                            target.get(id).await
                        } else {
                            Some(target.read(&pool, id, delay).await)
                        };
                        if let Some(version) = version {
                            log.reads.push((id, version, started_at));
                        }
                        // A run of hits may not yield otherwise.
                        tokio::task::yield_now().await;
                    }
                    Role::Writer | Role::NamespaceWriter => {
                        let (scope, pause) = if role == Role::Writer {
                            let scope = if rng.random_bool(KEY_SHARE) {
                                Scope::Keys
                            } else {
                                Scope::Tags
                            };
                            (scope, rng.random_range(0..=MAX_WRITE_PAUSE_MS))
                        } else {
                            let pause = rng.random_range(0..=MAX_NAMESPACE_PAUSE_MS);
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            if tokio::time::Instant::now() >= deadline {
                                break;
                            }
                            (Scope::Namespace, 0)
                        };
                        // Now and then two rows in one transaction, and one
                        // invalidation of both keys (or both tags).
                        let mut ids = vec![id];
                        let other = pick(&mut rng);
                        if role == Role::Writer && other != id && rng.random_bool(TWO_ROW_SHARE) {
                            ids.push(other);
                        }
                        let written: Vec<(i32, i64)> = sqlx::query_as(
                            "UPDATE rows SET version = version + 1 WHERE id = ANY($1) \
                             RETURNING id, version",
                        )
                        .bind(&ids)
                        .fetch_all(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("UPDATE of rows {ids:?}: {e}"));
                        assert_eq!(written.len(), ids.len(), "rows {ids:?}");
                        // Autocommit: committed before the invalidation.
                        if target.invalidate(&ids, scope).await {
                            let applied_at = now_ns();
                            log.commits
                                .extend(written.iter().map(|&(id, v)| (id, v, applied_at)));
                        } else {
                            log.queued += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
            log
        });
    }
    let mut all = Log::default();
    while let Some(joined) = tasks.join_next().await {
        let log = match joined {
            Ok(log) => log,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a workload task was cancelled: {e}"),
        };
        all.reads.extend(log.reads);
        all.commits.extend(log.commits);
        all.queued += log.queued;
    }

    save(&pool, config.worker, "reads", "started_at", &all.reads).await;
    save(&pool, config.worker, "commits", "applied_at", &all.commits).await;
    let summary = format!(
        "{} reads, {} applied writes, {} writes not applied; {}",
        all.reads.len(),
        all.commits.len(),
        all.queued,
        target.summary()
    );
    eprintln!("worker {}: {summary}", config.worker);
    sqlx::query("INSERT INTO workers (worker, summary) VALUES ($1, $2)")
        .bind(config.worker)
        .bind(summary)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Reader,
    Writer,
    NamespaceWriter,
}

fn pick(rng: &mut StdRng) -> i32 {
    if rng.random_bool(HOT_SHARE) {
        rng.random_range(1..=HOT_ROWS)
    } else {
        rng.random_range(1..=ROWS)
    }
}

/// Bulk-inserts `(id, version, <at>)` rows into `table`, in chunks.
async fn save(pool: &PgPool, worker: i32, table: &str, at: &str, rows: &[(i32, i64, i64)]) {
    // Both names are this file's constants.
    let sql = format!(
        "INSERT INTO {table} (id, version, {at}, worker) \
         SELECT id, version, at, $4 FROM UNNEST($1::int[], $2::bigint[], $3::bigint[]) \
         AS t(id, version, at)"
    );
    for chunk in rows.chunks(50_000) {
        let ids: Vec<i32> = chunk.iter().map(|r| r.0).collect();
        let versions: Vec<i64> = chunk.iter().map(|r| r.1).collect();
        let ats: Vec<i64> = chunk.iter().map(|r| r.2).collect();
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(ids)
            .bind(versions)
            .bind(ats)
            .bind(worker)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("could not save {table}: {e}"));
    }
}
