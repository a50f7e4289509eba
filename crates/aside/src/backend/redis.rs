//! The shared backend: Redis through redis-rs's `ConnectionManager`.

use std::time::Duration;

use std::sync::LazyLock;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Backend, FillToken, Stored};
use crate::error::{BackendError, Error, ErrorKind};

/// A Redis backend on one multiplexed, auto-reconnecting connection.
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
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBackendBuilder {
    url: String,
    connect_timeout: Duration,
    reconnect_max_delay: Duration,
    #[cfg(feature = "tls")]
    tls: Option<redis::TlsCertificates>,
}

impl RedisBackendBuilder {
    /// How long one connection attempt may take (default 250 ms).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The longest pause between reconnection attempts (default 200 ms). A short
    /// pause means the cache is used again soon after Redis comes back.
    pub fn reconnect_max_delay(mut self, d: Duration) -> Self {
        self.reconnect_max_delay = d;
        self
    }

    /// Trusts this CA (PEM) for `rediss://` instead of the system's roots, e.g.
    /// for a private CA.
    #[cfg(feature = "tls")]
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls
            .get_or_insert(redis::TlsCertificates {
                client_tls: None,
                root_cert: None,
            })
            .root_cert = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) for mutual TLS.
    #[cfg(feature = "tls")]
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls
            .get_or_insert(redis::TlsCertificates {
                client_tls: None,
                root_cert: None,
            })
            .client_tls = Some(redis::ClientTlsConfig {
            client_cert: cert_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }

    /// Validates the URL and creates the (lazy) connection.
    ///
    /// # Errors
    /// A `Config` error for a malformed URL or an unsupported scheme, or when
    /// called outside a tokio runtime (the connection needs one for its
    /// background task).
    pub fn build(self) -> Result<RedisBackend, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "RedisBackend must be built inside a tokio runtime",
            ));
        }
        let client = self.client()?;
        // One attempt per reconnect: while Redis is down every request fails
        // fast (and the cache's breaker stops asking), instead of every request
        // waiting out a long retry schedule inside the connection manager.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(self.reconnect_max_delay)
            .set_connection_timeout(Some(self.connect_timeout))
            // The cache times every operation itself (`backend_timeout`); a
            // second per-request timer here would double the timer cost of
            // every hit (measured: ~5 µs per GET on a current-thread runtime).
            .set_response_timeout(None);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid Redis connection", e))?;
        Ok(RedisBackend { conn })
    }
}

impl RedisBackendBuilder {
    #[cfg(not(feature = "tls"))]
    fn client(&self) -> Result<redis::Client, Error> {
        if self.url.starts_with("rediss://") {
            return Err(Error::config("rediss:// (TLS) needs aside's `tls` feature"));
        }
        redis::Client::open(self.url.as_str())
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid Redis URL", e))
    }

    #[cfg(feature = "tls")]
    fn client(&self) -> Result<redis::Client, Error> {
        if self.url.starts_with("rediss://") {
            // rustls needs one process-wide crypto provider; install ring's
            // unless the application installed one already.
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
        }
        let result = match &self.tls {
            Some(certs) => redis::Client::build_with_tls(self.url.as_str(), certs.clone()),
            None => redis::Client::open(self.url.as_str()),
        };
        result.map_err(|e| {
            Error::with_source(ErrorKind::Config, "invalid Redis URL or TLS settings", e)
        })
    }
}

impl RedisBackend {
    /// A builder for the Redis at `url`.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            connect_timeout: Duration::from_millis(250),
            reconnect_max_delay: Duration::from_millis(200),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// A backend for the Redis at `url` with default settings.
    ///
    /// # Errors
    /// A `Config` error for a malformed URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::builder(url).build()
    }

    /// Wraps a connection manager you configured yourself.
    pub fn from_connection_manager(conn: ConnectionManager) -> Self {
        RedisBackend { conn }
    }

    /// The underlying connection, for commands of your own.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

fn failed(e: redis::RedisError) -> BackendError {
    BackendError::failed(e)
}

/// The generation marker of a data key. Data keys are `{ns:key}`, so a marker
/// shares the data key's hash tag (same Redis Cluster slot) and, ending in
/// `:g` rather than `}`, can never equal a data key.
fn marker(key: &str) -> String {
    let mut m = String::with_capacity(key.len() + 2);
    m.push_str(key);
    m.push_str(":g");
    m
}

fn px(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// KEYS: data, marker, version counters... ARGV: bytes, ttl ms, expected
/// generation, expected versions...
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return 0 end
        for i = 3, #KEYS do
            if (redis.call('GET', KEYS[i]) or '0') ~= ARGV[i + 1] then return 0 end
        end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 1
        ",
    )
});

/// KEYS: version counters. ARGV: ttl ms (kept at least this long).
static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        for i = 1, #KEYS do
            redis.call('INCR', KEYS[i])
            if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) then
                redis.call('PEXPIRE', KEYS[i], ARGV[1])
            end
        end
        return #KEYS
        ",
    )
});

/// Reads `keys` with one MGET: the first as entry bytes, the rest as
/// counters (absent: 0).
async fn mget(
    conn: &mut ConnectionManager,
    keys: &[&str],
) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
    let mut values: Vec<Option<bytes::Bytes>> = redis::cmd("MGET")
        .arg(keys)
        .query_async(conn)
        .await
        .map_err(failed)?;
    let mut counters = Vec::with_capacity(values.len().saturating_sub(1));
    for v in values.iter().skip(1) {
        let n = match v {
            None => 0,
            Some(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    BackendError::failed(std::io::Error::other("a version counter is not a number"))
                })?,
        };
        counters.push(n);
    }
    let first = if values.is_empty() {
        None
    } else {
        values.swap_remove(0)
    };
    Ok((first.map(Stored::new), counters))
}

/// KEYS: data, marker. ARGV: bytes, ttl ms, marker ttl ms.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        redis.call('INCR', KEYS[2])
        redis.call('PEXPIRE', KEYS[2], ARGV[3])
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 1
        ",
    )
});

/// KEYS: data1, marker1, data2, marker2, ... ARGV: marker ttl ms.
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        for i = 1, #KEYS, 2 do
            redis.call('DEL', KEYS[i])
            redis.call('INCR', KEYS[i + 1])
            redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
        end
        return #KEYS / 2
        ",
    )
});

#[async_trait::async_trait]
impl Backend for RedisBackend {
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        let mut conn = self.conn.clone();
        let bytes: Option<bytes::Bytes> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        Ok(bytes.map(Stored::new))
    }

    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        let mut keys: Vec<&str> = Vec::with_capacity(1 + versions.len());
        keys.push(key);
        keys.extend(versions.iter().map(String::as_str));
        mget(&mut self.conn.clone(), &keys).await
    }

    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let marker = marker(key);
        let mut keys: Vec<&str> = Vec::with_capacity(2 + versions.len());
        keys.push(key);
        keys.push(&marker);
        keys.extend(versions.iter().map(String::as_str));
        let (stored, mut counters) = mget(&mut self.conn.clone(), &keys).await?;
        let generation = if counters.is_empty() {
            0
        } else {
            counters.remove(0)
        };
        Ok((stored, FillToken::new(generation, counters)))
    }

    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        let mut conn = self.conn.clone();
        let mut invocation = FILL.prepare_invoke();
        invocation
            .key(key)
            .key(marker(key))
            .arg(value.bytes().as_ref())
            .arg(px(ttl))
            .arg(token.generation().to_string());
        for (name, version) in versions.iter().zip(token.versions()) {
            invocation.key(name).arg(version.to_string());
        }
        let stored: u8 = invocation.invoke_async(&mut conn).await.map_err(failed)?;
        Ok(stored == 1)
    }

    async fn bump_versions(&self, versions: &[String], ttl: Duration) -> Result<(), BackendError> {
        if versions.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut invocation = BUMP.prepare_invoke();
        for name in versions {
            invocation.key(name);
        }
        invocation
            .arg(px(ttl))
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }

    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        marker_ttl: Duration,
    ) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        SET.key(key)
            .key(marker(key))
            .arg(value.bytes().as_ref())
            .arg(px(ttl))
            .arg(px(marker_ttl))
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }

    async fn invalidate(&self, keys: &[String], marker_ttl: Duration) -> Result<(), BackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut invocation = INVALIDATE.prepare_invoke();
        for key in keys {
            invocation.key(key).key(marker(key));
        }
        invocation
            .arg(px(marker_ttl))
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }
}
