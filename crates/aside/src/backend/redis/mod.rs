//! The shared backend: Redis through redis-rs's `ConnectionManager`, or a
//! Redis Cluster through redis-rs's async cluster connection (the `cluster`
//! feature; see `cluster` for what changes there and why it stays safe).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{
    Backend, BatchEntry, Capabilities, FillToken, Lease, Leases, StorageInfo, Stored, fresh_token,
};
use crate::error::{BackendError, Error};

mod backplane;
mod batch;
mod builder;
#[cfg(feature = "cluster")]
mod cluster;
mod conn;
mod leases;
mod scripts;
mod subscriber;
mod wait;

pub use backplane::RedisBackplane;
pub use builder::RedisBackendBuilder;
pub use conn::RedisConnection;

use crate::backend::Notifier;
use scripts::{ACQUIRE, FILL, FILLS_CHANNEL, SET, data, lease, marker, token_key, waiters};
use subscriber::Subscription;

/// A Redis backend on one multiplexed, auto-reconnecting connection, to one
/// Redis or (with the `cluster` feature, `RedisBackend::cluster`) to a
/// Redis Cluster.
///
/// Operations carry no timeout of their own: the [`Cache`](crate::Cache)
/// applies its `backend_timeout` around each one. If you use the backend
/// directly, wrap calls in `tokio::time::timeout`.
///
/// The connection is opened lazily: building a `RedisBackend` never waits for
/// Redis, so a service starts (and serves from its loader) while Redis is down,
/// and uses the cache as soon as Redis answers.
///
/// URLs: `redis://[user:password@]host[:port][/db]`, and `rediss://` for TLS
/// when aside is built with the `tls` feature.
///
/// ```
/// use aside::backend::RedisBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// let backend = RedisBackend::builder("redis://127.0.0.1:6379/0")
///     .connect_timeout(std::time::Duration::from_millis(200))
///     .build()?;
/// # let _ = backend; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    conn: RedisConnection,
    /// Fill notifications for lease waiters; `None` when built from a bare
    /// connection manager (waiters then re-check on a backoff).
    fills: Option<Arc<Fills>>,
    /// For subscriptions of our own (the backplane): one client per URL.
    clients: Option<(Vec<redis::Client>, Duration)>,
    /// Invalidations wait for this many replicas (`wait_for_replicas`).
    wait: Option<wait::ReplicaWait>,
}

/// The fill-notification subscription and the watches it wakes.
#[derive(Debug)]
struct Fills {
    notifier: Arc<Notifier>,
    _subscription: Subscription,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A builder for the Redis at `url`.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder::new(vec![url.into()], false)
    }

    /// A builder for the Redis Cluster reached through the seed nodes
    /// `urls` (any of its nodes; the rest are discovered).
    ///
    /// On a cluster, an entry and the tokens of its namespace live in
    /// different slots, so operations that touch both run as one script per
    /// slot rather than one atomic script; reads still check every entry's
    /// tokens, which keeps the consistency promise (see the guide's
    /// "Redis Cluster" page, `docs/cluster.md`).
    #[cfg(feature = "cluster")]
    pub fn cluster<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> RedisBackendBuilder {
        RedisBackendBuilder::new(urls.into_iter().map(Into::into).collect(), true)
    }

    /// A backend for the Redis at `url` with default settings.
    ///
    /// # Errors
    /// A `Config` error for a malformed URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::builder(url).build()
    }

    /// An escape hatch: wraps a connection manager you configured yourself
    /// (settings the builder does not offer). Without the
    /// client, no fill notifications are received: a load waiting for another
    /// process's lease re-checks the key on a backoff (5 ms doubling to
    /// 200 ms) instead of being woken.
    pub fn from_connection_manager(conn: ConnectionManager) -> Self {
        RedisBackend {
            conn: RedisConnection::Single(conn),
            fills: None,
            clients: None,
            wait: None,
        }
    }

    /// Runs ACQUIRE: reads the entry, reads or creates the marker and the
    /// counters, and takes the lease when `lease_token` is not empty.
    async fn acquire(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        lease_token: &str,
        lease_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let mut conn = self.conn.clone();
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(data(key))
            .key(marker(key))
            .key(lease(key))
            .key(waiters(key))
            .arg(lease_token)
            .arg(px(lease_ttl))
            .arg(px(marker_ttl))
            .arg(fresh_token());
        for name in versions {
            invocation.key(token_key(name)).arg(fresh_token());
        }
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await.map_err(failed)?;
        parse_acquire(reply, lease_token)
    }

    /// FILL: the conditional write, in one script.
    async fn fill_script(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        if token.generation() == 0 || token.versions().contains(&0) {
            // An absent token validates nothing.
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let lease_token = match token.lease() {
            Lease::Held(t) => t.as_str(),
            _ => "",
        };
        let mut invocation = FILL.prepare_invoke();
        invocation
            .key(data(key))
            .key(marker(key))
            .key(lease(key))
            .key(waiters(key))
            .arg(value.bytes().as_ref())
            .arg(px(ttl))
            .arg(token.generation().to_string())
            .arg(lease_token)
            .arg(FILLS_CHANNEL);
        for (name, version) in versions.iter().zip(token.versions()) {
            invocation.key(token_key(name)).arg(version.to_string());
        }
        let stored: u8 = invocation.invoke_async(&mut conn).await.map_err(failed)?;
        Ok(stored == 1)
    }

    /// SET: the unconditional write, in one script.
    async fn set_script(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let mut invocation = SET.prepare_invoke();
        invocation
            .key(data(key))
            .key(marker(key))
            .arg(value.bytes().as_ref())
            .arg(px(ttl));
        for name in versions {
            invocation.key(token_key(name));
        }
        invocation
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }

    /// A [`Backplane`](crate::backend::Backplane) on this Redis: pub/sub on
    /// `channel`, published through this backend's connection, heard on a
    /// connection of its own.
    ///
    /// # Errors
    /// `Config` for a backend built from a bare connection manager: it has no
    /// client to subscribe with.
    pub fn backplane(&self, channel: impl Into<String>) -> Result<RedisBackplane, Error> {
        let Some((clients, connect_timeout)) = self.clients.clone() else {
            return Err(Error::config(
                "a backplane needs a RedisBackend built from a URL (it subscribes with its client)",
            ));
        };
        Ok(RedisBackplane::new(
            self.conn.clone(),
            clients,
            connect_timeout,
            channel.into(),
        ))
    }

    /// Keys whose fill or lease release a load in this process is waiting
    /// to hear of now (a gauge for monitoring: it returns to 0 when no load
    /// waits for another's lease).
    pub fn fill_watches(&self) -> usize {
        self.fills.as_ref().map_or(0, |f| f.notifier.len())
    }

    /// An escape hatch: the underlying connection (one Redis or a cluster),
    /// for commands of your own (keys outside aside's, or reading aside's for
    /// tooling). Writing aside's keys through it bypasses the consistency
    /// promise.
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }
}

fn failed(e: redis::RedisError) -> BackendError {
    BackendError::failed(e)
}

fn malformed(what: &'static str) -> BackendError {
    BackendError::failed(std::io::Error::other(what))
}

/// Reads a token (absent: 0). Anything that is not a token (foreign or
/// corrupt bytes) also reads as 0, which validates nothing: the entries that
/// depend on it miss and reload, and the next load replaces it. It is not a
/// backend failure (the breaker must not open over one bad value).
fn token(v: &redis::Value) -> u64 {
    match v {
        redis::Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        redis::Value::BulkString(b) => parse_token(b),
        _ => 0,
    }
}

fn parse_token(b: &[u8]) -> u64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Parses ACQUIRE's reply: {taken, lease pttl, data, marker, counters...}.
fn parse_acquire(
    reply: Vec<redis::Value>,
    lease_token: &str,
) -> Result<(Option<Stored>, FillToken), BackendError> {
    let mut it = reply.into_iter();
    let (Some(taken), Some(pttl), Some(data), Some(marker)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(malformed("short lease reply"));
    };
    let versions = it.map(|v| token(&v)).collect();
    Ok(parse_key(taken, pttl, data, &marker, versions, lease_token))
}

/// One key's part of an ACQUIRE reply, with the counters' tokens.
fn parse_key(
    taken: redis::Value,
    pttl: redis::Value,
    data: redis::Value,
    marker: &redis::Value,
    versions: Vec<u64>,
    lease_token: &str,
) -> (Option<Stored>, FillToken) {
    let stored = match data {
        redis::Value::BulkString(b) => Some(Stored::new(b)),
        _ => None,
    };
    let lease = if lease_token.is_empty() {
        Lease::None
    } else if token(&taken) == 1 {
        Lease::Held(lease_token.to_owned())
    } else {
        // A lease without expiry reads as -1: treat it as one lease length
        // away, the caller bounds its wait anyway.
        let ms = match pttl {
            redis::Value::Int(n) if n > 0 => u64::try_from(n).unwrap_or(0),
            _ => 0,
        };
        Lease::Busy(Duration::from_millis(ms))
    };
    let token = FillToken::new(token(marker), versions).with_lease(lease);
    (stored, token)
}

fn px(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Reads `keys` with one MGET: the first as entry bytes, the rest as
/// tokens (absent or not a token: 0).
async fn mget(
    conn: &mut RedisConnection,
    keys: &[String],
) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
    let mut values: Vec<Option<bytes::Bytes>> = redis::cmd("MGET")
        .arg(keys)
        .query_async(conn)
        .await
        .map_err(failed)?;
    let counters = values
        .iter()
        .skip(1)
        .map(|v| v.as_deref().map_or(0, parse_token))
        .collect();
    let first = if values.is_empty() {
        None
    } else {
        values.swap_remove(0)
    };
    Ok((first.map(Stored::new), counters))
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::remote()
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        let mut conn = self.conn.clone();
        let reply: Result<Option<bytes::Bytes>, _> = redis::cmd("GET")
            .arg(data(key))
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(bytes) => Ok(bytes.map(Stored::new)),
            // A value of another type under the key (written by something
            // else) is a miss, not a failing backend: the breaker must not
            // open over one bad key. The next load replaces it.
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        let mut keys: Vec<String> = Vec::with_capacity(1 + versions.len());
        keys.push(data(key));
        keys.extend(versions.iter().map(|v| token_key(v)));
        mget(&mut self.conn.clone(), &keys).await
    }

    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self
                .cluster_acquire(key, versions, marker_ttl, "", Duration::ZERO)
                .await;
        }
        self.acquire(key, versions, marker_ttl, "", Duration::ZERO)
            .await
    }

    async fn get_many(
        &self,
        keys: &[String],
        versions: &[String],
    ) -> Result<(Vec<Option<Stored>>, Vec<u64>), BackendError> {
        self.mget_many(keys, versions).await
    }

    async fn get_for_fill_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self
                .cluster_acquire_many(keys, versions, marker_ttl, "", Duration::ZERO)
                .await;
        }
        self.acquire_many(keys, versions, marker_ttl, "", Duration::ZERO)
            .await
    }

    async fn fill_many(
        &self,
        fills: &[(BatchEntry, FillToken)],
        versions: &[String],
    ) -> Result<Vec<bool>, BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self.cluster_fill_many(fills, versions).await;
        }
        self.fill_many_script(fills, versions).await
    }

    async fn set_many(
        &self,
        entries: &[BatchEntry],
        versions: &[String],
    ) -> Result<(), BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self.cluster_set_many(entries, versions).await;
        }
        self.set_many_script(entries, versions).await
    }

    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self.cluster_fill(key, value, ttl, token, versions).await;
        }
        self.fill_script(key, value, ttl, token, versions).await
    }

    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        if versions.is_empty() {
            return Ok(());
        }
        self.delete(versions.iter().map(|name| token_key(name)).collect())
            .await
    }

    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self.cluster_set(key, value, ttl, versions).await;
        }
        self.set_script(key, value, ttl, versions).await
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.delete(keys.iter().flat_map(|k| [data(k), marker(k)]).collect())
            .await
    }

    fn storage_key(&self, key: &str) -> String {
        data(key)
    }

    async fn describe(&self, key: &str, versions: &[String]) -> Result<StorageInfo, BackendError> {
        // The entry and its lease share a hash tag: one slot, so one
        // pipeline on a cluster too.
        let mut conn = self.conn.clone();
        let (pttl, leased): (i64, bool) = redis::pipe()
            .cmd("PTTL")
            .arg(data(key))
            .cmd("EXISTS")
            .arg(lease(key))
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        // PTTL: -2 for no key, -1 for a key without expiry.
        let expires_in = u64::try_from(pttl).ok().map(Duration::from_millis);
        Ok(StorageInfo::new(data(key))
            .token_keys(versions.iter().map(|v| token_key(v)).collect())
            .lease(lease(key), leased)
            .expires_in(expires_in))
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }
}
