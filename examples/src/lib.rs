//! An example REST service over a `products` table, read through an aside
//! cache and written with invalidate-on-write.
//!
//! - `GET /products/{id}`: `cache.get_or_load`; a missing row is a 404,
//!   cached as a negative entry.
//! - `PUT /products/{id}` (JSON `{"name": .., "price_cents": ..}`) and
//!   `DELETE /products/{id}`: write the database, then invalidate the key.
//! - `GET /metrics`: the cache's counters in the Prometheus text format.
//!
//! SQLite (in memory by default) or PostgreSQL; an in-process cache by
//! default, Redis when [`Config::redis_url`] is set. [`AppState::new`] then
//! [`router`]; `main.rs` reads the configuration and serves it.

use std::sync::OnceLock;
use std::time::Duration;

use aside::Cache;
use aside::backend::{MemoryBackend, RedisBackend};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

mod repo;
mod routes;

pub use repo::{Product, Repo};
pub use routes::{INVALIDATION_HEADER, router};

/// What the service runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite::memory:` (the default), `sqlite://products.db`, or
    /// `postgres://user@host/db`.
    pub database_url: String,
    /// A Redis to share the cache between instances; `None`: in process.
    pub redis_url: Option<String>,
    /// The cache's namespace, also the `cache` label of its metrics.
    pub namespace: String,
    /// How long a product stays cached.
    pub ttl: Duration,
    /// Products created in an empty table (ids `1..=seed_rows`).
    pub seed_rows: u32,
    /// Added to every product `SELECT` (a networked database's latency).
    pub load_delay: Duration,
    /// How long one Redis operation may take before the request goes to
    /// the database instead.
    pub backend_timeout: Duration,
    /// How often the cache's counters are exported to `/metrics`.
    pub metrics_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "sqlite::memory:".to_owned(),
            redis_url: None,
            namespace: "products".to_owned(),
            ttl: Duration::from_secs(300),
            seed_rows: 1000,
            load_delay: Duration::ZERO,
            backend_timeout: Duration::from_millis(250),
            metrics_interval: Duration::from_secs(1),
        }
    }
}

/// What can stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The cache could not be built.
    #[error("cache: {0}")]
    Cache(#[from] aside::Error),
}

/// The handlers' shared state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    cache: Cache,
    repo: Repo,
    metrics: PrometheusHandle,
}

impl AppState {
    /// Installs the Prometheus recorder (once per process), connects to the
    /// database, creates and seeds `products`, and builds the cache.
    ///
    /// Must run inside a tokio runtime (the cache's metrics export is a task
    /// of it). A Redis that cannot be reached is logged, not fatal: the
    /// cache fails open, and requests are answered from the database.
    ///
    /// # Errors
    /// `Config` when another metrics recorder is installed or an option is
    /// invalid, `Db` when the database cannot be set up.
    pub async fn new(config: &Config) -> Result<Self, Error> {
        let metrics = prometheus()?;
        let repo = Repo::connect(&config.database_url, config.load_delay).await?;
        repo.migrate_and_seed(config.seed_rows).await?;
        let builder = Cache::builder()
            .namespace(config.namespace.clone())
            .ttl(config.ttl)
            .backend_timeout(config.backend_timeout)
            .metrics_interval(config.metrics_interval);
        let cache = match &config.redis_url {
            Some(url) => builder.backend(RedisBackend::new(url)?).build()?,
            None => builder.backend(MemoryBackend::new()).build()?,
        };
        if let Err(e) = cache.ping().await {
            tracing::warn!(error = %e, "the cache backend does not answer; serving from the database until it does");
        }
        Ok(AppState {
            cache,
            repo,
            metrics,
        })
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The database.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The Prometheus page, as `/metrics` serves it.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// The process's Prometheus recorder: installed by the first call, shared by
/// every later one (a process has one global `metrics` recorder; caches
/// tell their series apart by the `cache` label, their namespace).
fn prometheus() -> Result<PrometheusHandle, Error> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "aside_load_duration_seconds".to_owned(),
                    ),
                    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
                )
                .and_then(|b| b.install_recorder())
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::Config(format!("could not install the Prometheus recorder: {e}")))
}
