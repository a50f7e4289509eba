//! `--metrics-addr`: the command's own Prometheus page.
//!
//! `demo`, `warm` and `listen` run long enough to be watched: with
//! `--metrics-addr ADDR` their caches export aside's metrics (the library's
//! `metrics` feature, one series set per cache, labelled by namespace) and
//! the command serves them at `http://ADDR/metrics` until it ends. The
//! bound address is said on stderr (stdout is the command's output, and its
//! JSON with `--json`), so `--metrics-addr 127.0.0.1:0` picks a free port
//! and tells which.
//!
//! Why a listener of our own rather than the exporter's built-in one: the
//! built-in listener binds inside its own task and never says which port
//! it got, and it fails after the command has started, not before.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use aside::CacheBuilder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

/// How often the recorder's histograms are compacted (the built-in
/// listener's default).
const UPKEEP: Duration = Duration::from_secs(5);

/// Buckets of the load duration histogram, in seconds: loads are database
/// reads, from a millisecond to a few seconds.
const LOAD_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The `--metrics-addr` option, shared by the commands that serve metrics.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve the cache's metrics for Prometheus at http://ADDR/metrics while
    /// the command runs (e.g. 127.0.0.1:9898; port 0 picks a free port).
    /// The address is printed on stderr.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Installs the Prometheus recorder and starts serving it, when asked
    /// to; `None` otherwise.
    ///
    /// # Errors
    /// When the address cannot be bound, or another recorder is installed.
    pub async fn start(&self) -> anyhow::Result<Option<Exporter>> {
        let Some(addr) = self.metrics_addr else {
            return Ok(None);
        };
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("aside_load_duration_seconds".to_owned()),
                &LOAD_BUCKETS,
            )
            .and_then(PrometheusBuilder::install_recorder)
            .context("could not install the Prometheus recorder")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("could not listen on --metrics-addr {addr}"))?;
        let bound = listener
            .local_addr()
            .with_context(|| format!("--metrics-addr {addr}"))?;
        let task = tokio::spawn(serve(listener, handle).instrument(tracing::info_span!(
            "aside.metrics_exporter",
            %bound
        )));
        // Nothing more useful to do if stderr is gone.
        let _ = writeln!(
            std::io::stderr().lock(),
            "serving metrics on http://{bound}/metrics"
        );
        Ok(Some(Exporter { task }))
    }
}

/// The page being served; it stops when dropped.
#[derive(Debug)]
pub struct Exporter {
    task: JoinHandle<()>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `builder`, exporting its metrics when `exporter` serves them.
pub fn export(builder: CacheBuilder, exporter: Option<&Exporter>) -> CacheBuilder {
    builder.metrics(exporter.is_some())
}

/// Answers `GET /metrics` with the rendered page, and compacts the
/// histograms now and then (the recorder does not do it by itself).
async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let mut tick = tokio::time::interval(UPKEEP);
    let upkeep = async move {
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    };
    tokio::select! {
        () = upkeep => {}
        served = axum::serve(listener, app).into_future() => {
            // Said on stderr: the command goes on without its page, and
            // the CLI installs no tracing subscriber that would show it.
            if let Err(e) = served {
                let _ = writeln!(std::io::stderr().lock(), "aside: the metrics page stopped: {e}");
            }
        }
    }
}
