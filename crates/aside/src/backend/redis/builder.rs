//! [`RedisBackendBuilder`]: one Redis or, with the `cluster` feature, a
//! Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::conn::RedisConnection;
use super::scripts::FILLS_CHANNEL;
use super::steps::Steps;
use super::subscriber::Subscription;
use super::wait::ReplicaWait;
use super::{Fills, RedisBackend};
use crate::backend::{Notifier, without_password};
use crate::error::{Error, ErrorKind};

/// Builds a [`RedisBackend`].
#[derive(Clone)]
#[must_use]
pub struct RedisBackendBuilder {
    /// One URL, or a cluster's seed nodes.
    urls: Vec<String>,
    cluster: bool,
    connect_timeout: Duration,
    reconnect_max_delay: Duration,
    wait: Option<ReplicaWait>,
    #[cfg(feature = "tls")]
    tls: Option<redis::TlsCertificates>,
}

// By hand: the URLs may carry a password, which must not reach logs.
impl std::fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| without_password(u)).collect();
        f.debug_struct("RedisBackendBuilder")
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl RedisBackendBuilder {
    pub(super) fn new(urls: Vec<String>, cluster: bool) -> Self {
        RedisBackendBuilder {
            urls,
            cluster,
            connect_timeout: Duration::from_millis(250),
            reconnect_max_delay: Duration::from_millis(200),
            wait: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

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

    /// Makes every invalidation (of keys, tags or the namespace) wait until
    /// at least `replicas` replicas have it, for at most `timeout`, before
    /// it counts as applied. Off by default.
    ///
    /// Redis replicates asynchronously: without this, a primary that
    /// crashes right after acknowledging an invalidation may take it with
    /// it, and the replica promoted in its place still holds the entry (or
    /// the tag or namespace token) that was deleted, so reads can return
    /// data older than an invalidation that returned
    /// [`Invalidation::Applied`](crate::Invalidation::Applied). With it,
    /// the `DEL` is followed by `WAIT replicas timeout` on the same
    /// connection (on a cluster, the same node: one pipeline per slot to the
    /// slot's primary); when fewer replicas acknowledge in time the
    /// invalidation is reported failed, so the cache queues and retries it
    /// and bypasses those keys meanwhile
    /// ([`Invalidation::Queued`](crate::Invalidation::Queued)).
    ///
    /// The cost: each invalidation takes one more round trip from the
    /// primary to its replicas (well under a millisecond on a local
    /// network), and `WAIT` blocks the connection it runs on meanwhile, so
    /// the requests queued behind it on aside's one multiplexed connection
    /// (per node) wait as long. While no replica answers, every
    /// invalidation waits the whole `timeout` and is queued; keep
    /// `timeout` under the cache's
    /// [`backend_timeout`](crate::CacheBuilder::backend_timeout). Reads and
    /// fills are not affected (a fill lost with a primary is a miss, never
    /// a stale read: see RELIABILITY.md).
    ///
    /// `WAIT` does not make Redis strongly consistent: a failover can still
    /// promote a replica that did not acknowledge (the documentation of
    /// `WAIT` says so); with one replica per primary, the one that
    /// acknowledged is the one promoted.
    pub fn wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some(ReplicaWait { replicas, timeout });
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

    /// Validates the URL(s) and creates the (lazy) connection.
    ///
    /// # Errors
    /// A `Config` error for a malformed URL or an unsupported scheme, for a
    /// cluster without seed URLs, or when called outside a tokio runtime (the
    /// connection needs one for its background task).
    pub fn build(self) -> Result<RedisBackend, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "RedisBackend must be built inside a tokio runtime",
            ));
        }
        // One client per URL: the subscriptions (fill wake-ups, the
        // backplane) use them in turn, so on a cluster they move to another
        // node when theirs goes away (PUBLISH reaches every node).
        let clients = self
            .urls
            .iter()
            .map(|url| self.client(url))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = clients.first().cloned() else {
            return Err(Error::config("a Redis cluster needs at least one URL"));
        };
        let (conn, steps) = if self.cluster {
            self.cluster_connection()?
        } else {
            // One attempt per reconnect: while Redis is down every request
            // fails fast (and the cache's breaker stops asking), instead of
            // every request waiting out a long retry schedule inside the
            // connection manager.
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(self.reconnect_max_delay)
                .set_connection_timeout(Some(self.connect_timeout))
                // The cache times every operation itself (`backend_timeout`);
                // a second per-request timer here would double the timer cost
                // of every hit (measured: ~5 µs per GET on a current-thread
                // runtime).
                .set_response_timeout(None);
            let manager = ConnectionManager::new_lazy_with_config(first, config).map_err(|e| {
                Error::with_source(ErrorKind::Config, "invalid Redis connection", e)
            })?;
            (
                RedisConnection::Single(manager),
                &super::steps::OneNode as &'static dyn Steps,
            )
        };
        let notifier = Arc::new(Notifier::default());
        let listener: Arc<dyn crate::backend::BackplaneListener> = notifier.clone();
        let subscription = Subscription::start(
            clients.clone(),
            self.connect_timeout,
            FILLS_CHANNEL.to_owned(),
            Arc::downgrade(&listener),
        );
        Ok(RedisBackend {
            conn,
            steps,
            fills: Some(Arc::new(Fills {
                notifier,
                _subscription: subscription,
            })),
            clients: Some((clients, self.connect_timeout)),
            wait: self.wait,
        })
    }

    /// A cluster connection, and the steps that keep to one slot each.
    #[cfg(feature = "cluster")]
    fn cluster_connection(&self) -> Result<(RedisConnection, &'static dyn Steps), Error> {
        let builder =
            redis::cluster::ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
                // A few quick retries follow a failover (MOVED, a refreshed slot
                // map); longer outages are the cache's breaker's business.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(
                    u64::try_from(self.reconnect_max_delay.as_millis()).unwrap_or(u64::MAX),
                )
                .connection_timeout(self.connect_timeout);
        #[cfg(feature = "tls")]
        let builder = match &self.tls {
            Some(certs) => builder.certs(certs.clone()),
            None => builder,
        };
        let client = builder
            .build()
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid Redis cluster URLs", e))?;
        // Connects in the background: building never waits for the cluster.
        // No per-request timer, as for one Redis (the cache times calls).
        let config =
            redis::cluster::ClusterConfig::new().set_connection_timeout(self.connect_timeout);
        Ok((
            RedisConnection::Cluster(client.get_pending_async_connection_with_config(config)),
            &super::cluster::Cluster,
        ))
    }

    #[cfg(not(feature = "cluster"))]
    fn cluster_connection(&self) -> Result<(RedisConnection, &'static dyn Steps), Error> {
        Err(Error::config(
            "Redis Cluster needs aside's `cluster` feature",
        ))
    }
}

impl RedisBackendBuilder {
    #[cfg(not(feature = "tls"))]
    fn client(&self, url: &str) -> Result<redis::Client, Error> {
        if url.starts_with("rediss://") {
            return Err(Error::config("rediss:// (TLS) needs aside's `tls` feature"));
        }
        redis::Client::open(url)
            .map_err(|e| Error::with_source(ErrorKind::Config, "invalid Redis URL", e))
    }

    #[cfg(feature = "tls")]
    fn client(&self, url: &str) -> Result<redis::Client, Error> {
        if url.starts_with("rediss://") {
            // rustls needs one process-wide crypto provider; install ring's
            // unless the application installed one already.
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
        }
        let result = match &self.tls {
            Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
            None => redis::Client::open(url),
        };
        result.map_err(|e| {
            Error::with_source(ErrorKind::Config, "invalid Redis URL or TLS settings", e)
        })
    }
}
