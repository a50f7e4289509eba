//! The source of truth: a throwaway schema in a real PostgreSQL.
//!
//! A real database, not a counter in memory: a commit in PostgreSQL is what
//! a service invalidates after, and its reads (in their own transactions, on
//! other connections) are what a loader sees. Each run gets a fresh schema,
//! so runs (and concurrent test binaries) never see each other's rows.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// Tried first, unless `ASIDE_TEST_PG_URL` says otherwise.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Tried when the first URL does not connect (a server set up with the OS
/// user as superuser, e.g. in a container running as root).
const FALLBACK_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// Connections per run: enough that readers and writers rarely queue for
/// one, few enough that two tests running side by side stay far below
/// PostgreSQL's default `max_connections` (100).
const POOL_SIZE: u32 = 10;

/// A reachable PostgreSQL and the options that reached it.
#[derive(Debug)]
pub struct Postgres {
    options: PgConnectOptions,
    admin: PgPool,
}

impl Postgres {
    /// Connects, or panics saying what is needed. The test never skips: a
    /// consistency check that quietly does not run proves nothing.
    pub async fn connect() -> Self {
        let first = std::env::var("ASIDE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let mut tried = Vec::new();
        for url in [first.as_str(), FALLBACK_URL] {
            if tried.iter().any(|(u, _): &(String, String)| u == url) {
                continue;
            }
            let options = match PgConnectOptions::from_str(url) {
                Ok(o) => o,
                Err(e) => {
                    tried.push((url.to_owned(), e.to_string()));
                    continue;
                }
            };
            let admin = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await;
            match admin {
                Ok(admin) => return Postgres { options, admin },
                Err(e) => tried.push((url.to_owned(), e.to_string())),
            }
        }
        let tried: Vec<String> = tried.iter().map(|(u, e)| format!("{u}: {e}")).collect();
        panic!(
            "the consistency tests need PostgreSQL on 127.0.0.1:5432 with a database `test` \
             (trust auth), or ASIDE_TEST_PG_URL set to one; none answered:\n  {}",
            tried.join("\n  ")
        );
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
