//! A Redis-backed cache: `get_or_load`, negative caching, and invalidation
//! after a write.
//!
//! `ASIDE_REDIS_URL=redis://127.0.0.1:6379 cargo run -p aside --example basic_redis`
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, Key};
use serde::{Deserialize, Serialize};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
}

/// Stands in for the database: rows, and a count of the `SELECT`s it ran.
#[derive(Clone, Default)]
struct Db {
    rows: Arc<Mutex<HashMap<i64, Product>>>,
    selects: Arc<AtomicU32>,
}

impl Db {
    async fn select(&self, id: i64) -> Result<Option<Product>, std::io::Error> {
        self.selects.fetch_add(1, Ordering::SeqCst);
        let rows = self
            .rows
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        Ok(rows.get(&id).cloned())
    }

    fn update_price(&self, id: i64, price_cents: i64) {
        if let Ok(mut rows) = self.rows.lock()
            && let Some(row) = rows.get_mut(&id)
        {
            row.price_cents = price_cents;
        }
    }
}

/// Reads a product through the cache: the loader runs only on a miss.
async fn product(cache: &Cache, db: &Db, id: i64) -> Result<Option<Product>, aside::Error> {
    let db = db.clone();
    cache
        .get_or_load(Key::new("product").part(id), move || async move {
            db.select(id).await
        })
        .await
}

pub async fn run(redis_url: &str) -> Result<(), Box<dyn Error>> {
    let cache = Cache::builder()
        .namespace("example-basic")
        .ttl(Duration::from_secs(600))
        .backend(RedisBackend::new(redis_url)?)
        // Generous for a busy machine: past it a read counts as a Redis
        // failure and goes to the database.
        .backend_timeout(Duration::from_secs(2))
        .build()?;
    // The backend connects lazily; ping once so that a wrong URL is said
    // plainly instead of every read quietly falling back to the database.
    cache.ping().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        format!("cannot reach Redis ({e}{cause}); start redis-server, or set ASIDE_REDIS_URL (default {DEFAULT_URL})")
    })?;
    // Another run of this example may have left entries: start clean.
    for id in [1, 2] {
        cache.invalidate(Key::new("product").part(id)).await?;
    }

    let db = Db::default();
    let lamp = Product {
        id: 1,
        name: "lamp".into(),
        price_cents: 1999,
    };
    db.rows
        .lock()
        .map_err(|_| "poisoned")?
        .insert(1, lamp.clone());

    // A miss: the loader runs once and the row is cached.
    assert_eq!(product(&cache, &db, 1).await?, Some(lamp.clone()));
    // A hit: Redis answers, the database is not asked.
    assert_eq!(product(&cache, &db, 1).await?, Some(lamp));
    assert_eq!(db.selects.load(Ordering::SeqCst), 1);

    // "No such row" is cached too (for the shorter negative TTL), so lookups
    // of absent ids do not all reach the database.
    assert_eq!(product(&cache, &db, 2).await?, None);
    assert_eq!(product(&cache, &db, 2).await?, None);
    assert_eq!(db.selects.load(Ordering::SeqCst), 2);

    // The write path: commit to the database, then invalidate the key.
    db.update_price(1, 2499);
    let done = cache.invalidate(Key::new("product").part(1)).await?;
    // `Queued` would mean Redis could not be reached: aside retries it, and
    // this process reads the key from the database until it lands.
    assert!(done.is_applied());
    let fresh = product(&cache, &db, 1).await?;
    assert_eq!(fresh.map(|p| p.price_cents), Some(2499));
    assert_eq!(db.selects.load(Ordering::SeqCst), 3);

    let s = cache.stats();
    println!(
        "basic_redis: hits {}, negative hits {}, misses {}, loads {}",
        s.hits, s.negative_hits, s.misses, s.loads
    );
    assert_eq!((s.hits, s.negative_hits, s.misses), (1, 1, 3));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("ASIDE_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    run(&url).await
}
