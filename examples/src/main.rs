//! `aside-example-service`: the products service on a TCP port.
//!
//! ```text
//! cargo run -p aside-example-service                       # SQLite in memory, in-process cache
//! DATABASE_URL=postgres://postgres@127.0.0.1/shop REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run -p aside-example-service -- --listen 127.0.0.1:3000
//! ```

use std::time::Duration;

use anyhow::Context as _;
use aside_example_service::{AppState, Config, router};
use clap::Parser;

/// A products REST service read through an aside cache.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where to listen.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:3000")]
    listen: String,
    /// `sqlite::memory:`, `sqlite://products.db` or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite::memory:")]
    database_url: String,
    /// A Redis to share the cache with other instances (in process when unset).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// The cache's namespace (the `cache` label of its metrics).
    #[arg(long, default_value = "products")]
    namespace: String,
    /// How long a product stays cached, in seconds.
    #[arg(long, default_value_t = 300)]
    ttl_secs: u64,
    /// Products created when the table is empty.
    #[arg(long, default_value_t = 1000)]
    seed_rows: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    let args = Args::parse();
    let config = Config {
        database_url: args.database_url,
        redis_url: args.redis_url,
        namespace: args.namespace,
        ttl: Duration::from_secs(args.ttl_secs.max(1)),
        seed_rows: args.seed_rows,
        ..Config::default()
    };
    let state = AppState::new(&config)
        .await
        .context("could not start the service")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let cache = state.cache().clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the server failed")?;
    // Invalidations that could not reach Redis live in memory: give them a
    // last chance before the process exits.
    if let Err(e) = cache.flush_invalidations(Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "invalidations still queued at exit");
    }
    Ok(())
}
