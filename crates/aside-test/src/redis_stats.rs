//! What Redis itself says it ran (`INFO`), for tests whose claim is a number
//! of round trips, commands or evictions, and a plain connection to ask it
//! with, beside the cache's own.
//!
//! ```no_run
//! use aside_test::redis_stats::{commandstats, raw, reset_stats};
//!
//! # async fn demo(redis: &aside_test::RedisServer) {
//! let mut conn = raw(redis).await;
//! reset_stats(&mut conn).await;
//! // ...the cache's work...
//! let gets = commandstats(&mut conn).await.get("get").copied().unwrap_or(0);
//! # let _ = gets;
//! # }
//! ```
//!
//! Like the rest of this crate's test helpers, these panic when Redis does
//! not answer: the test cannot go on without it.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;

use crate::RedisServer;

/// A plain connection to `redis`, beside the cache's own.
pub async fn raw(redis: &RedisServer) -> MultiplexedConnection {
    raw_url(&redis.url()).await
}

/// A plain connection to the Redis at `url`.
pub async fn raw_url(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("not a Redis URL: {url}: {e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("could not connect to Redis at {url}: {e}"))
}

/// Calls of each command since the last [`reset_stats`] (`INFO
/// commandstats`), by lower-case name (`get`, `evalsha`, ...).
pub async fn commandstats(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    info(conn, "commandstats")
        .await
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// A counter of `INFO stats` (`evicted_keys`, `total_commands_processed`,
/// ...), if Redis reports it.
pub async fn stat(conn: &mut MultiplexedConnection, name: &str) -> Option<u64> {
    info(conn, "stats").await.lines().find_map(|l| {
        let (field, value) = l.split_once(':')?;
        if field == name {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Zeroes the counts [`commandstats`] and [`stat`] read (`CONFIG
/// RESETSTAT`).
pub async fn reset_stats(conn: &mut MultiplexedConnection) {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(conn)
        .await
        .unwrap_or_else(|e| panic!("CONFIG RESETSTAT: {e}"));
}

async fn info(conn: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("INFO {section}: {e}"))
}
