//! The source of truth: a throwaway schema in a real PostgreSQL.
//!
//! A real database, not a counter in memory: a commit in PostgreSQL is what
//! a service invalidates after, and its reads (in their own transactions, on
//! other connections) are what a loader sees. The server is this test
//! binary's own (`aside_test::pg_url`: started on a free port, stopped when
//! the binary exits), or `ASIDE_TEST_PG_URL`'s. Each run gets a fresh
//! schema, so runs (and tests running side by side) never see each other's
//! rows.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// Connections per run: enough that readers and writers rarely queue for
/// one, few enough that the tests running side by side stay far below the
/// server's `max_connections`.
const POOL_SIZE: u32 = 10;

/// A reachable PostgreSQL and the options that reached it.
#[derive(Debug)]
pub struct Postgres {
    options: PgConnectOptions,
    admin: PgPool,
}

impl Postgres {
    /// Connects, or panics saying what is needed (how to install
    /// PostgreSQL, or why the server did not start). The test never skips:
    /// a consistency check that quietly does not run proves nothing.
    pub async fn connect() -> Self {
        let url = aside_test::pg_url().unwrap_or_else(|e| panic!("{e}"));
        let options = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("not a PostgreSQL URL: {url}: {e}"));
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| panic!("could not connect to PostgreSQL at {url}: {e}"));
        Postgres { options, admin }
    }

    /// Creates `aside_c_<random hex>` with `rows(id, version)` seeded with
    /// ids `1..=rows` at version 1, and a pool whose connections use it as
    /// their search path (so every query is a plain static string).
    pub async fn schema(&self, rows: i32) -> Schema {
        let name = format!("aside_c_{:016x}", rand::random::<u64>());
        // The name is ours (hex digits after a fixed prefix): nothing to inject.
        let ddl = format!(
            "CREATE SCHEMA {name};
             CREATE TABLE {name}.rows (id int PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO {name}.rows (id, version) SELECT g, 1 FROM generate_series(1, {rows}) g;"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("could not create schema {name}: {e}"));
        // From here on, a panic drops the guard, which drops the schema.
        let mut schema = Schema {
            name: name.clone(),
            options: self.options.clone(),
            admin: self.admin.clone(),
            pool: None,
        };
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            // `synchronous_commit=off` changes durability, not visibility: a
            // commit is seen by every later transaction either way. It only
            // spares each write an fsync, so writers are quick enough that
            // loads and writes of a hot row overlap most of the time.
            .connect_with(self.options.clone().options([
                ("search_path", name.as_str()),
                ("synchronous_commit", "off"),
            ]))
            .await
            .unwrap_or_else(|e| panic!("could not open a pool on schema {name}: {e}"));
        schema.pool = Some(pool);
        schema
    }
}

/// One run's schema. Dropped with [`Schema::drop_now`]; if a panic gets
/// there first, `Drop` removes it on a connection of its own.
#[derive(Debug)]
pub struct Schema {
    name: String,
    options: PgConnectOptions,
    admin: PgPool,
    pool: Option<PgPool>,
}

impl Schema {
    /// Connections whose search path is this schema: `rows` is this run's.
    pub fn pool(&self) -> &PgPool {
        self.pool
            .as_ref()
            .expect("the pool is set as soon as the schema exists")
    }

    /// Every row's version, by id.
    pub async fn versions(&self) -> Vec<(i32, i64)> {
        sqlx::query_as("SELECT id, version FROM rows ORDER BY id")
            .fetch_all(self.pool())
            .await
            .unwrap_or_else(|e| panic!("could not read {}.rows: {e}", self.name))
    }

    /// Closes the pool and drops the schema.
    pub async fn drop_now(mut self) {
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("could not drop schema {}: {e}", self.name));
        // Dropped: nothing left for `Drop` to do.
        self.name.clear();
    }
}

impl Drop for Schema {
    /// Reached when a run panicked: drop the schema anyway, so failed runs do
    /// not leave tables behind. The test's runtime may be unwinding, so this
    /// uses a thread with a runtime and a connection of its own.
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let (name, options) = (std::mem::take(&mut self.name), self.options.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect_with(&options).await {
                    let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                    let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
