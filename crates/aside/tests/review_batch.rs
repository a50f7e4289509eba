//! Batch lookups under attack: what is left in Redis once every TTL ran
//! out, the consistency promise across instances with tags and `set_many`,
//! and the edge cases on which the three backends must agree. Every test
//! runs against a real redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use aside::backend::{MemoryBackend, TieredBackend};
use aside::{Cache, RedisBackend};
use aside_test::RedisServer;

#[derive(Debug, thiserror::Error)]
#[error("database is down")]
struct DbDown;

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

fn builder(namespace: &str) -> aside::CacheBuilder {
    Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(60))
        .compression(aside::Compression::None)
}

fn redis_backend(redis: &RedisServer) -> RedisBackend {
    RedisBackend::new(&redis.url()).unwrap()
}

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A loader that finds every key it is asked for, as its own value.
async fn echo(keys: Vec<String>) -> Result<HashMap<String, String>, DbDown> {
    Ok(keys.into_iter().map(|k| (k.clone(), k)).collect())
}

#[path = "review_batch/agree.rs"]
mod agree;
#[path = "review_batch/leftovers.rs"]
mod leftovers;
#[path = "review_batch/promise.rs"]
mod promise;
