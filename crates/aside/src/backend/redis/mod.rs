//! The shared backend: Redis through redis-rs's `ConnectionManager`, or a
//! Redis Cluster through redis-rs's async cluster connection (the `cluster`
//! feature; see `cluster` for what changes there and why it stays safe).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{
    AcquireRequest, Acquired, Backend, FillRequest, FillWatch, Found, Inspect, LeaseAsk, Leases,
    Profile, ReadRequest, SetRequest, StorageInfo, Stored,
};
use crate::error::{BackendError, Error};

mod acquire;
mod backplane;
mod builder;
#[cfg(feature = "cluster")]
mod cluster;
mod conn;
mod runner;
mod scripts;
mod steps;
mod subscriber;
mod wait;

pub use backplane::RedisBackplane;
pub use builder::RedisBackendBuilder;
pub use conn::RedisConnection;

use crate::backend::Notifier;
use scripts::{data, lease, marker, token_key};
use steps::Steps;
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
    /// One Redis or a cluster: how the atomic steps run, chosen once when
    /// the backend is built.
    steps: &'static dyn Steps,
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
            steps: &steps::OneNode,
            fills: None,
            clients: None,
            wait: None,
        }
    }

    /// A [`Backplane`](crate::backend::Backplane) on this Redis: pub/sub on
    /// `channel`, published and heard on connections of its own, on a
    /// thread of its own (see [`RedisBackplane`]).
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
            clients,
            connect_timeout,
            channel.into(),
            self.conn.is_cluster(),
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

fn px(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisBackend {
    /// One key without tokens: a `GET`. A value of another type under the
    /// key (written by something else) is a miss, not a failing backend:
    /// the breaker must not open over one bad key. The next load replaces
    /// it.
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        let reply: Result<Option<bytes::Bytes>, _> = redis::cmd("GET")
            .arg(data(key))
            .query_async(&mut self.conn.clone())
            .await;
        match reply {
            Ok(bytes) => Ok(bytes.map(Stored::new)),
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    /// Entries and tokens in one `MGET` (one per slot on a cluster);
    /// absent or not a token: 0.
    async fn mget(&self, keys: &[String], versions: &[String]) -> Result<Found, BackendError> {
        if keys.is_empty() && versions.is_empty() {
            return Ok(Found::default());
        }
        let mut values = self.steps.read(&self.conn, keys, versions).await?;
        if values.len() != keys.len() + versions.len() {
            return Err(malformed("MGET answered a different number of keys"));
        }
        let tokens = values
            .split_off(keys.len())
            .iter()
            .map(|v| v.as_deref().map_or(0, parse_token))
            .collect();
        Ok(Found::new(
            values.into_iter().map(|v| v.map(Stored::new)).collect(),
            tokens,
        ))
    }
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    fn profile(&self) -> Profile {
        Profile::remote()
    }

    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        self.mget(request.keys, request.versions).await
    }

    async fn read_one(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        self.get(key).await
    }

    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        self.steps.acquire(&self.conn, request).await
    }

    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        self.steps.fill(&self.conn, request).await
    }

    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        self.steps.set(&self.conn, request).await
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.delete(keys.iter().flat_map(|k| [data(k), marker(k)]).collect())
            .await
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        if versions.is_empty() {
            return Ok(());
        }
        self.delete(versions.iter().map(|name| token_key(name)).collect())
            .await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    fn inspect(&self) -> Option<&dyn Inspect> {
        Some(self)
    }
}

/// Leases are keys beside the entry (`{ns:key}:l`, one slot with it), taken
/// by the lease request (`acquire.rs`); fills and releases are announced on
/// one pub/sub channel (only when a load waited), heard by the backend's
/// subscriber.
#[async_trait::async_trait]
impl Leases for RedisBackend {
    async fn renew(&self, keys: &[String], lease: LeaseAsk<'_>) -> Result<Vec<bool>, BackendError> {
        self.steps.renew(&self.conn, keys, lease).await
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<(), BackendError> {
        self.steps.release(&self.conn, keys, token).await
    }

    fn watch_fills(&self, key: &str) -> Option<FillWatch> {
        // Fills announce the data key (the scripts publish it).
        self.fills.as_ref().map(|f| f.notifier.watch(&data(key)))
    }
}

#[async_trait::async_trait]
impl Inspect for RedisBackend {
    fn storage_key(&self, key: &str) -> String {
        data(key)
    }

    async fn describe(&self, key: &str, versions: &[String]) -> Result<StorageInfo, BackendError> {
        // The entry and its lease share a hash tag: one slot, so one
        // pipeline on a cluster too.
        let (pttl, leased): (i64, bool) = redis::pipe()
            .cmd("PTTL")
            .arg(data(key))
            .cmd("EXISTS")
            .arg(lease(key))
            .query_async(&mut self.conn.clone())
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
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(failed)
    }
}
