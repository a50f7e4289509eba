//! The shared backend: Redis through redis-rs's `ConnectionManager`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Backend, Stored};
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
            .get_or_insert_with(|| redis::TlsCertificates {
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
            .get_or_insert_with(|| redis::TlsCertificates {
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

    async fn set(&self, key: &str, value: Stored, ttl: Duration) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        // PX, not EX: sub-second TTLs and jitter survive.
        let px = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(key)
            .arg(value.bytes().as_ref())
            .arg("PX")
            .arg(px)
            .exec_async(&mut conn)
            .await
            .map_err(failed)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), BackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(keys)
            .exec_async(&mut conn)
            .await
            .map_err(failed)
    }
}
