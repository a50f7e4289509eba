//! Reaching Redis for the commands that need it, with bounded waits and
//! passwords kept out of messages.

use std::time::Duration;

use anyhow::Context as _;
use aside::backend::RedisBackend;
use aside::{Cache, CacheBuilder};

/// How long connecting to Redis and each request may take: a command
/// against an unreachable server fails within this, never hangs.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// `url` with its user information (user name and password) replaced by
/// `***`, fit for messages: `redis://:secret@host:6379/0` becomes
/// `redis://***@host:6379/0`. Any `scheme://` URL (`rediss://`,
/// `postgres://`); anything else is returned unchanged.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact("postgres://app:pw@db/shop"),
            "postgres://***@db/shop"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
