//! Reaching Redis for the commands that need it, with bounded waits and
//! passwords kept out of messages.

use std::time::Duration;

use anyhow::Context as _;
use aside::backend::without_password;
use aside::{Cache, CacheBuilder, RedisBackend};

/// How long connecting to Redis and each request may take: a command
/// against an unreachable server fails within this, never hangs.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// `url` without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    without_password(url)
}

/// A Redis backend at `url` (a node of a Redis Cluster with `cluster`),
/// checked to answer.
pub(crate) async fn checked_redis(
    url: &str,
    cluster: bool,
    namespace: &str,
) -> anyhow::Result<RedisBackend> {
    let builder = if cluster {
        RedisBackend::cluster([url])
    } else {
        RedisBackend::builder(url)
    };
    let backend = builder
        .connect_timeout(REDIS_TIMEOUT)
        .build()
        .with_context(|| format!("invalid --redis URL {}", redact(url)))?;
    // `get_or_load` quietly falls back to the loader when Redis is down;
    // a command against an unreachable Redis would do nothing, so ask first
    // (through a separate cache, to keep the real one's counters clean).
    let probe = Cache::builder()
        .namespace(namespace)
        .backend(backend.clone())
        .backend_timeout(REDIS_TIMEOUT)
        .build()
        .context("invalid cache options (check --namespace)")?;
    probe
        .ping()
        .await
        .with_context(|| format!("could not reach Redis at {}", redact(url)))?;
    Ok(backend)
}

/// A cache of `namespace` (and schema version) on the Redis at `url`,
/// checked to answer, as the service that owns the namespace sees it.
pub(crate) async fn redis_cache(
    url: &str,
    cluster: bool,
    namespace: &str,
    schema_version: Option<u32>,
    configure: impl FnOnce(CacheBuilder) -> CacheBuilder,
) -> anyhow::Result<Cache> {
    let backend = checked_redis(url, cluster, namespace).await?;
    let mut builder = Cache::builder()
        .namespace(namespace)
        .backend_timeout(REDIS_TIMEOUT)
        .backend(backend);
    if let Some(version) = schema_version {
        builder = builder.schema_version(version);
    }
    configure(builder)
        .build()
        .context("invalid cache options (check --namespace)")
}
