//! The source of truth: a `products` table in SQLite or PostgreSQL, through
//! sqlx. It counts the `SELECT`s it runs per product, which is how the tests
//! see what the cache spares the database.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::Error;

/// One row of `products`, as served and cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The primary key.
    pub id: i64,
    /// The product's name.
    pub name: String,
    /// The price, in cents.
    pub price_cents: i64,
    /// When the row was last written, in milliseconds since the Unix epoch.
    pub updated_at: i64,
}

type Row = (i64, String, i64, i64);

impl From<Row> for Product {
    fn from((id, name, price_cents, updated_at): Row) -> Self {
        Product {
            id,
            name,
            price_cents,
            updated_at,
        }
    }
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The products table. Cheap to clone: clones share the pool and the
/// counters.
#[derive(Debug, Clone)]
pub struct Repo {
    pool: Pool,
    /// Added after every `SELECT` of a product: what a networked database
    /// costs, and the window in which concurrent requests meet.
    load_delay: Duration,
    selects: Arc<Mutex<HashMap<i64, u64>>>,
}

impl Repo {
    /// Connects to `url`: `sqlite:...` (`sqlite::memory:`, `sqlite://file.db`)
    /// or `postgres://...`.
    ///
    /// # Errors
    /// `Config` for another scheme, `Db` when the database cannot be reached.
    pub async fn connect(url: &str, load_delay: Duration) -> Result<Self, Error> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
            // An in-memory database lives as long as its connection: keep
            // exactly one, for ever. (SQLite runs one writer at a time
            // anyway; a file database gets a few connections for readers.)
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(if memory { 1 } else { 4 })
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?;
            Pool::Sqlite(pool)
        } else {
            return Err(Error::Config(
                "the database URL must start with sqlite: or postgres://".to_owned(),
            ));
        };
        Ok(Repo {
            pool,
            load_delay,
            selects: Arc::default(),
        })
    }

    /// Creates `products` if it does not exist and, when it is empty, fills
    /// it with products `1..=rows`.
    ///
    /// # Errors
    /// `Db`.
    pub async fn migrate_and_seed(&self, rows: u32) -> Result<(), Error> {
        const CREATE: &str = "CREATE TABLE IF NOT EXISTS products (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            price_cents BIGINT NOT NULL,
            updated_at BIGINT NOT NULL)";
        let (rows, now) = (i64::from(rows), now_ms());
        match &self.pool {
            Pool::Sqlite(pool) => {
                sqlx::query(CREATE).execute(pool).await?;
                sqlx::query(
                    "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?1)
                     INSERT INTO products (id, name, price_cents, updated_at)
                     SELECT n, 'product ' || n, 100 * n, ?2 FROM seq
                     WHERE NOT EXISTS (SELECT 1 FROM products)",
                )
                .bind(rows)
                .bind(now)
                .execute(pool)
                .await?;
            }
            Pool::Postgres(pool) => {
                sqlx::query(CREATE).execute(pool).await?;
                sqlx::query(
                    "INSERT INTO products (id, name, price_cents, updated_at)
                     SELECT n, 'product ' || n, 100 * n, $2 FROM generate_series(1, $1::bigint) AS n
                     WHERE NOT EXISTS (SELECT 1 FROM products)",
                )
                .bind(rows)
                .bind(now)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// `SELECT`s one product; `None` when there is no such row.
    ///
    /// # Errors
    /// `sqlx`'s (the cache's loader hands it on to the request).
    pub async fn product(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        if let Ok(mut selects) = self.selects.lock() {
            *selects.entry(id).or_default() += 1;
        }
        let sql = "SELECT id, name, price_cents, updated_at FROM products WHERE id = $1";
        let row: Option<Row> = match &self.pool {
            Pool::Sqlite(pool) => sqlx::query_as(sql).bind(id).fetch_optional(pool).await?,
            Pool::Postgres(pool) => sqlx::query_as(sql).bind(id).fetch_optional(pool).await?,
        };
        if !self.load_delay.is_zero() {
            tokio::time::sleep(self.load_delay).await;
        }
        Ok(row.map(Product::from))
    }

    /// Inserts or updates product `id`, stamped with the current time.
    ///
    /// # Errors
    /// `Db`.
    pub async fn upsert(&self, id: i64, name: &str, price_cents: i64) -> Result<Product, Error> {
        let sql = "INSERT INTO products (id, name, price_cents, updated_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                       price_cents = excluded.price_cents, updated_at = excluded.updated_at
                   RETURNING id, name, price_cents, updated_at";
        let row: Row = match &self.pool {
            Pool::Sqlite(pool) => {
                let q = sqlx::query_as(sql).bind(id).bind(name).bind(price_cents);
                q.bind(now_ms()).fetch_one(pool).await?
            }
            Pool::Postgres(pool) => {
                let q = sqlx::query_as(sql).bind(id).bind(name).bind(price_cents);
                q.bind(now_ms()).fetch_one(pool).await?
            }
        };
        Ok(row.into())
    }

    /// Deletes product `id`; whether there was one.
    ///
    /// # Errors
    /// `Db`.
    pub async fn delete(&self, id: i64) -> Result<bool, Error> {
        let sql = "DELETE FROM products WHERE id = $1";
        let deleted = match &self.pool {
            Pool::Sqlite(pool) => sqlx::query(sql)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected(),
            Pool::Postgres(pool) => sqlx::query(sql)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(deleted > 0)
    }

    /// How many times product `id` was `SELECT`ed.
    pub fn selects(&self, id: i64) -> u64 {
        self.selects
            .lock()
            .map_or(0, |s| s.get(&id).copied().unwrap_or(0))
    }

    /// How many product `SELECT`s ran, in all.
    pub fn selects_total(&self) -> u64 {
        self.selects.lock().map_or(0, |s| s.values().sum())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
