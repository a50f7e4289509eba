//! The source of truth: a `products` table in an SQLite file, through sqlx.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

/// Connections in the pool: SQLite runs one writer at a time, and the machine
/// running the demo may have two cores; a few connections let reads overlap.
const POOL_SIZE: u32 = 4;

/// Rows per `INSERT` while seeding (4 parameters each, far below SQLite's
/// limit on bound parameters).
const INSERT_BATCH: u64 = 500;

/// One row of `products`, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub version: i64,
}

/// A pool of connections to the demo database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// Creates (or opens) the database file at `path` in WAL mode.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .min_connections(POOL_SIZE)
            .connect_with(options)
            .await
            .with_context(|| format!("could not open SQLite database {}", path.display()))?;
        Ok(Db { pool })
    }

    /// Creates `products` and fills it with `rows` rows (ids `1..=rows`,
    /// version 1) in one transaction of multi-row inserts.
    pub async fn seed(&self, rows: u64, seed: u64) -> anyhow::Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("could not begin the seed transaction")?;
        sqlx::query("DROP TABLE IF EXISTS products")
            .execute(&mut *tx)
            .await
            .context("could not drop an old products table")?;
        sqlx::query(
            "CREATE TABLE products (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 price_cents INTEGER NOT NULL,
                 version INTEGER NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await
        .context("could not create the products table")?;

        let mut rng = StdRng::seed_from_u64(seed);
        let mut insert =
            QueryBuilder::<Sqlite>::new("INSERT INTO products (id, name, price_cents, version) ");
        let mut first = 1;
        while first <= rows {
            let last = rows.min(first + INSERT_BATCH - 1);
            let batch: Vec<(i64, i64)> = (first..=last)
                .map(|id| (to_i64(id), rng.random_range(100..100_000)))
                .collect();
            insert.reset();
            insert.push_values(batch, |mut row, (id, price)| {
                row.push_bind(id)
                    .push_bind(format!("product {id}"))
                    .push_bind(price)
                    .push_bind(1_i64);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .with_context(|| format!("could not insert products {first}..={last}"))?;
            first = last + 1;
        }
        tx.commit()
            .await
            .context("could not commit the seeded rows")?;
        Ok(())
    }

    /// `SELECT`s one product; `None` when there is no such row.
    pub async fn product(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        let row: Option<(i64, String, i64, i64)> =
            sqlx::query_as("SELECT id, name, price_cents, version FROM products WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, name, price_cents, version)| Product {
            id,
            name,
            price_cents,
            version,
        }))
    }

    /// `SELECT`s the products of `ids` in one query (`WHERE id IN (...)`);
    /// ids without a row are left out.
    pub async fn products(&self, ids: &[i64]) -> Result<Vec<Product>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT id, name, price_cents, version FROM products WHERE id IN (",
        );
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        query.push(")");
        let rows: Vec<(i64, String, i64, i64)> =
            query.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, price_cents, version)| Product {
                id,
                name,
                price_cents,
                version,
            })
            .collect())
    }

    /// Changes a product's price and bumps its version; returns the new
    /// version once the (autocommit) update has committed, or `None` when
    /// there is no such row.
    pub async fn update_price(&self, id: i64, price_cents: i64) -> anyhow::Result<Option<i64>> {
        // `fetch_all` steps the statement to completion, so the implicit
        // transaction has committed by the time the versions are back.
        let versions: Vec<i64> = sqlx::query_scalar(
            "UPDATE products SET price_cents = ?, version = version + 1 WHERE id = ? \
             RETURNING version",
        )
        .bind(price_cents)
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("could not update product {id}"))?;
        Ok(versions.first().copied())
    }

    /// Closes every connection (and checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Product ids fit an SQLite integer: `rows` is validated far below `i64::MAX`.
pub fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}
