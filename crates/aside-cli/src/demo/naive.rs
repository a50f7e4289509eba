//! Textbook cache-aside with no protection, for comparison: read the cache;
//! on a miss load from the database and store whatever was loaded, with the
//! TTL; writers delete the key after their commit.
//!
//! Nothing ties a fill to the delete it races: a load that read the row
//! before a write, and stores it after the writer's delete, leaves the old
//! row cached until the TTL or the next write of that row. aside makes that
//! fill conditional on the key's generation; this does not, and the demo
//! counts the difference.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use aside::backend::RedisConnection;

use super::db::Product;

/// A demo that cannot reach its cache should fail, not hang: the connection
/// has no response timeout of its own (see `RedisBackend`).
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the naive cache keeps products: the same kind of store as aside's
/// run, so that only the protocol differs.
#[derive(Clone)]
enum Store {
    /// moka, as aside's memory backend.
    Memory(moka::future::Cache<u64, Product>),
    /// Plain `GET`, `SET ... PX`, `DEL`; values as JSON under `<prefix>:<id>`.
    Redis {
        conn: RedisConnection,
        prefix: String,
    },
}

/// Naive cache-aside over one store. Cheap to clone.
#[derive(Clone)]
pub struct Naive {
    store: Store,
    ttl: Duration,
}

impl fmt::Debug for Naive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = match &self.store {
            Store::Memory(_) => "memory".to_owned(),
            Store::Redis { prefix, .. } => format!("Redis, keys {prefix}:<id>"),
        };
        f.debug_struct("Naive")
            .field("store", &store)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Naive {
    /// In process, holding at most `entries` products (as aside's run).
    pub fn in_memory(entries: u64, ttl: Duration) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(entries)
            .time_to_live(ttl)
            .build();
        Naive {
            store: Store::Memory(cache),
            ttl,
        }
    }

    /// On Redis, through `conn`; keys are `<prefix>:<id>`.
    pub fn on_redis(conn: RedisConnection, prefix: String, ttl: Duration) -> Self {
        Naive {
            store: Store::Redis { conn, prefix },
            ttl,
        }
    }

    /// Cache-aside read: the cached product, or `load` run and its result
    /// stored, whatever happened meanwhile. Returns the product and whether
    /// it came from the cache.
    pub async fn read(
        &self,
        id: u64,
        load: impl Future<Output = Result<Option<Product>, sqlx::Error>>,
    ) -> anyhow::Result<(Option<Product>, bool)> {
        if let Some(p) = self.get(id).await? {
            return Ok((Some(p), true));
        }
        let loaded = load
            .await
            .with_context(|| format!("could not load product {id}"))?;
        if let Some(p) = &loaded {
            self.set(id, p).await?;
        }
        Ok((loaded, false))
    }

    /// Removes `id`: called after the write committed.
    pub async fn delete(&self, id: u64) -> anyhow::Result<()> {
        match &self.store {
            Store::Memory(cache) => {
                cache.invalidate(&id).await;
                Ok(())
            }
            Store::Redis { conn, prefix } => {
                let cmd = redis::cmd("DEL").arg(format!("{prefix}:{id}")).clone();
                redis_query::<()>(conn, cmd, "DEL").await
            }
        }
    }

    async fn get(&self, id: u64) -> anyhow::Result<Option<Product>> {
        match &self.store {
            Store::Memory(cache) => Ok(cache.get(&id).await),
            Store::Redis { conn, prefix } => {
                let cmd = redis::cmd("GET").arg(format!("{prefix}:{id}")).clone();
                let Some(json) = redis_query::<Option<String>>(conn, cmd, "GET").await? else {
                    return Ok(None);
                };
                let product = serde_json::from_str(&json)
                    .with_context(|| format!("undecodable cached product {id}"))?;
                Ok(Some(product))
            }
        }
    }

    async fn set(&self, id: u64, product: &Product) -> anyhow::Result<()> {
        match &self.store {
            Store::Memory(cache) => {
                cache.insert(id, product.clone()).await;
                Ok(())
            }
            Store::Redis { conn, prefix } => {
                let json = serde_json::to_string(product).context("could not encode a product")?;
                let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
                let cmd = redis::cmd("SET")
                    .arg(format!("{prefix}:{id}"))
                    .arg(json)
                    .arg("PX")
                    .arg(ttl_ms)
                    .clone();
                redis_query::<()>(conn, cmd, "SET").await
            }
        }
    }
}

/// Runs one command on a clone of `conn` (clones share the connection).
async fn redis_query<T: redis::FromRedisValue>(
    conn: &RedisConnection,
    cmd: redis::Cmd,
    name: &str,
) -> anyhow::Result<T> {
    let mut conn = conn.clone();
    match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async(&mut conn)).await {
        Ok(result) => result.with_context(|| format!("naive cache: Redis {name} failed")),
        Err(_) => anyhow::bail!("naive cache: Redis {name} got no answer within {REDIS_TIMEOUT:?}"),
    }
}
