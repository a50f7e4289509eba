//! The PostgreSQL change bridge against a real PostgreSQL (this binary's
//! own, started on a free port by `aside_test::pg_url`, or
//! `ASIDE_TEST_PG_URL`'s; each test has a schema of its own) and a real
//! Redis: plain SQL
//! writes on another connection invalidate the cache; a restart and a cut
//! connection are gaps that invalidate the namespace; garbage on the channel
//! is counted, never fatal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr as _;
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::bridge::{BridgeError, BridgeHandle, ChangeBridge, TableMap};
use aside::{Cache, EntryOptions, ErrorKind};
use aside_test::RedisServer;
use aside_test::fixtures::redis_server;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// How long a committed change may take to reach the cache.
const PROPAGATION: Duration = Duration::from_secs(2);

/// The server all tests of this binary share; a panic that says how to
/// install PostgreSQL when it is missing.
fn pg_url() -> String {
    aside_test::pg_url().unwrap_or_else(|e| panic!("{e}"))
}

/// One test's world: a schema with `products(id, name, category_id)`, a
/// Redis, a cache on it, and a bridge (not started) mapping the table.
struct World {
    schema: String,
    channel: String,
    admin: PgPool,
    /// Connections whose search path is the schema.
    pool: PgPool,
    cache: Cache,
    bridge: ChangeBridge,
    _redis: RedisServer,
}

impl World {
    async fn new() -> World {
        let suffix = format!("{:016x}", rand::random::<u64>());
        let schema = format!("aside_b_{suffix}");
        let channel = format!("aside_t_{suffix}");
        let url = pg_url();
        let options = PgConnectOptions::from_str(&url).expect("PostgreSQL URL");
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| panic!("could not connect to PostgreSQL at {url}: {e}"));
        let ddl = format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.products (id int PRIMARY KEY, name text NOT NULL, category_id int);
             INSERT INTO {schema}.products VALUES (1, 'lamp', 3), (2, 'desk', 3), (3, 'rug', 4);"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .expect("create the schema");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.options([("search_path", schema.as_str())]))
            .await
            .expect("a pool on the schema");
        let redis = redis_server();
        let cache = Cache::builder()
            .namespace(format!("bridge{suffix}"))
            .namespace_invalidation(true)
            .ttl(Duration::from_secs(600))
            .backend(RedisBackend::new(&redis.url()).expect("redis URL"))
            .build()
            .expect("cache");
        let bridge = ChangeBridge::builder(cache.clone(), pg_url())
            .channel(channel.clone())
            .table(
                TableMap::new(format!("{schema}.products"))
                    .key("product:{id}")
                    .tag("category:{category_id}"),
            )
            .build()
            .expect("bridge");
        bridge.install(&admin).await.expect("install the trigger");
        World {
            schema,
            channel,
            admin,
            pool,
            cache,
            bridge,
            _redis: redis,
        }
    }

    async fn start(&self) -> BridgeHandle {
        self.bridge.start().await.expect("start the bridge")
    }

    /// A product's name through the cache, as an application reads it.
    async fn name(&self, id: i32) -> Option<String> {
        let pool = self.pool.clone();
        self.cache
            .get_or_load(format!("product:{id}"), move || async move {
                sqlx::query_scalar::<_, String>("SELECT name FROM products WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
            })
            .await
            .expect("read")
    }

    /// The names in a category, cached under a key the bridge does not map,
    /// with the category's tag.
    async fn category(&self, category: i32) -> Vec<String> {
        let pool = self.pool.clone();
        let options = EntryOptions::new().tag(format!("category:{category}"));
        self.cache
            .get_or_load_with(
                format!("names-in:{category}"),
                &options,
                move || async move {
                    sqlx::query_scalar::<_, String>(
                        "SELECT name FROM products WHERE category_id = $1 ORDER BY id",
                    )
                    .bind(category)
                    .fetch_all(&pool)
                    .await
                    .map(Some)
                },
            )
            .await
            .expect("read")
            .unwrap_or_default()
    }

    /// A write as a batch job or psql makes it: its own connection, no
    /// cache in sight.
    async fn sql(&self, statement: &str) {
        let mut conn = PgConnection::connect_with(
            &PgConnectOptions::from_str(&pg_url())
                .expect("URL")
                .options([("search_path", self.schema.as_str())]),
        )
        .await
        .expect("connect");
        sqlx::raw_sql(AssertSqlSafe(statement.to_owned()))
            .execute(&mut conn)
            .await
            .expect("write");
        conn.close().await.expect("close");
    }

    /// A write that sends no notification (its trigger disabled for it), as
    /// if made while no bridge listened.
    async fn unnoticed(&self, statement: &str) {
        self.sql(&format!(
            "BEGIN; ALTER TABLE products DISABLE TRIGGER USER; {statement}; \
             ALTER TABLE products ENABLE TRIGGER USER; COMMIT;"
        ))
        .await;
    }

    async fn drop_schema(self) {
        self.pool.close().await;
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.admin).await;
    }
}

/// Polls `check` until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_update_invalidates_the_key() {
    let w = World::new().await;
    let bridge = w.start().await;
    assert_eq!(w.name(1).await.as_deref(), Some("lamp"));
    // Now cached: a write the bridge does not hear of is not seen.
    w.unnoticed("UPDATE products SET name = 'lamp (unseen)' WHERE id = 1")
        .await;
    assert_eq!(
        w.name(1).await.as_deref(),
        Some("lamp"),
        "served from the cache"
    );

    w.sql("UPDATE products SET name = 'brass lamp' WHERE id = 1")
        .await;
    assert!(
        eventually(PROPAGATION, || async {
            w.name(1).await.as_deref() == Some("brass lamp")
        })
        .await,
        "the update never reached the cache: {:?}",
        bridge.stats()
    );
    let stats = bridge.stop().await;
    assert_eq!(stats.gaps, 1, "only the start: {stats:?}");
    assert!(stats.keys_invalidated >= 1, "{stats:?}");
    assert_eq!((stats.malformed, stats.errors), (0, 0), "{stats:?}");
    w.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_row_invalidates_both_tags() {
    let w = World::new().await;
    let bridge = w.start().await;
    assert_eq!(w.category(3).await, ["lamp", "desk"]);
    assert_eq!(w.category(4).await, ["rug"]);

    w.sql("UPDATE products SET category_id = 4 WHERE id = 1")
        .await;
    let both = eventually(PROPAGATION, || async {
        w.category(3).await == ["desk"] && w.category(4).await == ["lamp", "rug"]
    })
    .await;
    let stats = bridge.stop().await;
    assert!(both, "a category kept the old list: {stats:?}");
    assert_eq!(
        stats.tags_invalidated, 2,
        "category:3 and category:4: {stats:?}"
    );
    assert_eq!(stats.gaps, 1, "not a namespace invalidation: {stats:?}");
    w.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_a_gap() {
    let w = World::new().await;
    let first = w.start().await;
    assert_eq!(w.name(2).await.as_deref(), Some("desk"));
    first.stop().await;

    // Sent while nobody listens: PostgreSQL drops the notification.
    w.sql("UPDATE products SET name = 'oak desk' WHERE id = 2")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.name(2).await.as_deref(), Some("desk"), "still cached");

    let second = w.start().await;
    // The start invalidated the namespace before returning.
    assert_eq!(w.name(2).await.as_deref(), Some("oak desk"));
    let stats = second.stop().await;
    assert_eq!(
        (stats.gaps, stats.namespace_invalidations),
        (1, 1),
        "{stats:?}"
    );
    w.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_a_gap() {
    let w = World::new().await;
    let bridge = w.start().await;
    assert_eq!(w.name(3).await.as_deref(), Some("rug"));
    // A change whose notification is lost, as it would be while the
    // connection is down.
    w.unnoticed("UPDATE products SET name = 'wool rug' WHERE id = 3")
        .await;
    assert_eq!(w.name(3).await.as_deref(), Some("rug"));

    let application = format!("aside bridge {}", w.channel);
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&application)
    .fetch_all(&w.admin)
    .await
    .expect("terminate");
    assert_eq!(killed, [true], "the listener's backend");

    assert!(
        eventually(Duration::from_secs(10), || async {
            bridge.stats().gaps >= 2
        })
        .await,
        "no gap counted: {:?}",
        bridge.stats()
    );
    assert_eq!(w.name(3).await.as_deref(), Some("wool rug"));
    // And it listens again.
    w.sql("UPDATE products SET name = 'silk rug' WHERE id = 3")
        .await;
    assert!(
        eventually(PROPAGATION, || async {
            w.name(3).await.as_deref() == Some("silk rug")
        })
        .await,
        "not listening after the reconnection: {:?}",
        bridge.stats()
    );
    let stats = bridge.stop().await;
    assert!(stats.namespace_invalidations >= 2, "{stats:?}");
    w.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_not_fatal() {
    let w = World::new().await;
    let bridge = w.start().await;
    assert_eq!(w.name(1).await.as_deref(), Some("lamp"));
    let garbage = [
        "garbage".to_owned(),
        "{\"v\":1}".to_owned(),
        "[1,2,3]".to_owned(),
        "\u{1F980}".repeat(100),
    ];
    for payload in &garbage {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&w.channel)
            .bind(payload)
            .execute(&w.admin)
            .await
            .expect("notify");
    }
    assert!(
        eventually(PROPAGATION, || async { bridge.stats().malformed == 4 }).await,
        "{:?}",
        bridge.stats()
    );
    assert!(bridge.is_running());
    // None of them touched the cache...
    assert_eq!(bridge.stats().namespace_invalidations, 1, "the start only");
    // ...and the bridge still works.
    w.sql("UPDATE products SET name = 'lava lamp' WHERE id = 1")
        .await;
    assert!(
        eventually(PROPAGATION, || async {
            w.name(1).await.as_deref() == Some("lava lamp")
        })
        .await,
        "{:?}",
        bridge.stats()
    );
    let stats = bridge.stop().await;
    assert_eq!((stats.malformed, stats.errors), (4, 0), "{stats:?}");
    w.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_without_namespace_invalidation_is_refused() {
    let cache = Cache::builder().namespace("plain").build().expect("cache");
    let bridge = ChangeBridge::builder(cache, pg_url())
        .channel("aside_t_refused")
        .table(TableMap::new("products").key("product:{id}"))
        .build()
        .expect("bridge");
    match bridge.start().await {
        Err(BridgeError::Cache(e)) => assert_eq!(e.kind(), ErrorKind::Config),
        other => panic!("expected a Config error from the cache, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_trigger_cannot_describe_invalidates_the_namespace() {
    let w = World::new().await;
    // A second bridge on the table whose key reads a wide column.
    let bridge = ChangeBridge::builder(w.cache.clone(), pg_url())
        .channel(format!("{}_wide", w.channel))
        .table(TableMap::new(format!("{}.products", w.schema)).key("by-name:{name}"))
        .build()
        .expect("bridge");
    bridge.install(&w.admin).await.expect("install");
    let handle = bridge.start().await.expect("start");
    let namespace_invalidations = || handle.stats().namespace_invalidations;
    assert_eq!(namespace_invalidations(), 1, "the start");

    // A short name: a key invalidation.
    w.sql("UPDATE products SET name = 'short' WHERE id = 1")
        .await;
    assert!(
        eventually(PROPAGATION, || async {
            handle.stats().keys_invalidated == 2
        })
        .await,
        "old and new name: {:?}",
        handle.stats()
    );
    // A name too long for a NOTIFY payload: the trigger says "overflow".
    w.sql(&format!(
        "UPDATE products SET name = '{}' WHERE id = 1",
        "x".repeat(9000)
    ))
    .await;
    assert!(
        eventually(PROPAGATION, || async { namespace_invalidations() == 2 }).await,
        "{:?}",
        handle.stats()
    );
    // TRUNCATE has no rows to describe.
    w.sql("TRUNCATE products").await;
    assert!(
        eventually(PROPAGATION, || async { namespace_invalidations() == 3 }).await,
        "{:?}",
        handle.stats()
    );
    // A mapped column dropped from the table: writes still succeed, and the
    // bridge invalidates the namespace.
    w.sql("ALTER TABLE products DROP COLUMN name").await;
    w.sql("INSERT INTO products (id, category_id) VALUES (9, 1)")
        .await;
    assert!(
        eventually(PROPAGATION, || async { namespace_invalidations() == 4 }).await,
        "{:?}",
        handle.stats()
    );
    let stats = handle.stop().await;
    assert_eq!(
        (stats.malformed, stats.errors, stats.gaps),
        (0, 0, 1),
        "{stats:?}"
    );
    w.drop_schema().await;
}
