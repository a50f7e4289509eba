//! Exports a cache's metrics in the Prometheus text format.
//!
//! `cargo run -p aside --example metrics --features metrics`
//!
//! A service serves `handle.render()` on its `/metrics` route (or enables
//! the exporter's `http-listener` feature and calls
//! `PrometheusBuilder::new().with_http_listener(addr).install()`), and
//! Prometheus scrapes it.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use aside::Cache;
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Installed before the cache is built: it receives everything from the
    // first export on.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("aside_load_duration_seconds".to_owned()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
        )?
        .install_recorder()?;
    let cache = Cache::builder()
        .namespace("shop")
        .metrics_interval(Duration::from_millis(200))
        .build()?;
    for i in 0..100u32 {
        let key = format!("product:{}", i % 10);
        let _: Option<u32> = cache
            .get_or_load(key, move || async move { Ok::<_, std::io::Error>(Some(i)) })
            .await?;
    }
    cache.invalidate("product:1").await?;
    // The export runs every 200 ms here (1 s by default).
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{}", handle.render());
    Ok(())
}
