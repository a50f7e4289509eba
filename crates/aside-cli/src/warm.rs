//! `aside warm`: fills the demo's product cache from a list of keys, the
//! way a new instance fills its cache before it takes traffic.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use aside::backend::MemoryBackend;
use aside::{Cache, HotKeys, Key, WarmOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::connect::{checked_redis, redact};
use crate::demo::db::{Db, Product};
use crate::demo::unique_namespace;
use crate::exporter::{Exporter, MetricsArgs, export};
use crate::output::{print_json, show_progress};

/// Options of `aside warm`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["keys", "hot_keys", "all"])))]
pub struct WarmArgs {
    /// A file of keys to warm, one a line (`product:42`); blank lines and
    /// lines starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// A hot-keys list saved by `HotKeys::to_json`.
    #[arg(long, value_name = "FILE")]
    hot_keys: Option<PathBuf>,
    /// Every product of the table.
    #[arg(long)]
    all: bool,
    /// Products seeded into the SQLite table (as `aside demo --rows`).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    rows: u64,
    /// Seed of the seeded prices.
    #[arg(long, value_name = "N", default_value_t = 42)]
    seed: u64,
    /// Keys per batch-loader call (one `SELECT ... WHERE id IN (...)`).
    #[arg(long, value_name = "N", default_value_t = 500)]
    chunk_size: usize,
    /// Chunks loaded at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    concurrency: usize,
    /// Seconds a cached product is kept.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    ttl: u64,
    /// Cache in this Redis (e.g. redis://127.0.0.1:6379) instead of in process.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The Redis URL names a node of a Redis Cluster (any node: the others
    /// are found from it).
    #[arg(long, requires = "redis")]
    cluster: bool,
    /// Key namespace (default: unique per run).
    #[arg(long)]
    namespace: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// One JSON document on stdout instead of the summary; no progress bar.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    metrics: MetricsArgs,
}

impl WarmArgs {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=10_000_000).contains(&self.rows),
            "--rows must be between 1 and 10000000, got {}",
            self.rows
        );
        ensure!(self.chunk_size > 0, "--chunk-size must be at least 1");
        ensure!(
            (1..=256).contains(&self.concurrency),
            "--concurrency must be between 1 and 256, got {}",
            self.concurrency
        );
        ensure!(self.ttl > 0, "--ttl must be at least 1 second");
        Ok(())
    }

    /// The keys to warm, and where they came from.
    fn keys(&self) -> anyhow::Result<(Vec<String>, String)> {
        if let Some(path) = &self.keys {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read --keys {}", path.display()))?;
            let keys = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            return Ok((keys, format!("{}", path.display())));
        }
        if let Some(path) = &self.hot_keys {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read --hot-keys {}", path.display()))?;
            let hot = HotKeys::from_json(&text)
                .with_context(|| format!("could not read --hot-keys {}", path.display()))?;
            return Ok((
                hot.keys().map(str::to_owned).collect(),
                format!("hot keys {}", path.display()),
            ));
        }
        Ok((
            (1..=self.rows)
                .map(|id| product_key(id).as_str().to_owned())
                .collect(),
            "every product".to_owned(),
        ))
    }
}

fn product_key(id: u64) -> Key {
    Key::new("product").part(id)
}

/// The product id of a key `product:<id>`.
fn product_id(key: &str) -> Option<i64> {
    key.strip_prefix("product:")?.parse().ok()
}

/// Seeds the table, warms the cache and prints the summary on stdout.
pub async fn run(args: WarmArgs) -> anyhow::Result<()> {
    args.validate()?;
    let show = show_progress(args.quiet, args.json);
    let namespace = args.namespace.clone().unwrap_or_else(unique_namespace);
    let (keys, source) = args.keys()?;
    // Keys that name no product would be cached as "not found": say so
    // and leave them out instead.
    let (keys, foreign): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| product_id(k).is_some());
    let exporter = args.metrics.start().await?;
    let cache = build_cache(&args, &namespace, exporter.as_ref()).await?;

    let store = match &args.redis {
        Some(url) => format!("Redis at {}", redact(url)),
        None => "in process (memory backend)".to_owned(),
    };
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "aside warm: {} keys from {source}; {} products in SQLite; cache: {}, namespace {namespace:?}, ttl {}s",
            keys.len(),
            args.rows,
            store,
            args.ttl
        )?;
    }
    if !foreign.is_empty() && !args.json {
        writeln!(
            out,
            "skipped {} keys that are not product:<id> (first: {:?})",
            foreign.len(),
            foreign[0]
        )?;
    }
    drop(out);

    let dir = tempfile::Builder::new()
        .prefix("aside-warm-")
        .tempdir()
        .context("could not create a temporary directory for the database")?;
    let db = Db::open(&dir.path().join("warm.db")).await?;
    db.seed(args.rows, args.seed).await?;

    let bar = progress_bar(show, keys.len());
    let progress = bar.clone();
    let options = WarmOptions::new()
        .chunk_size(args.chunk_size)
        .concurrency(args.concurrency)
        .on_progress(move |p| {
            progress.set_length(p.total as u64);
            progress.set_position(p.done as u64);
        });
    let loader_db = db.clone();
    let loader = move |keys: Vec<String>| {
        let db = loader_db.clone();
        async move {
            // By id, to answer each product under the key it was asked as
            // (`product:042` too).
            let mut asked: HashMap<i64, String> = keys
                .into_iter()
                .filter_map(|k| Some((product_id(&k)?, k)))
                .collect();
            let ids: Vec<i64> = asked.keys().copied().collect();
            let found = db.products(&ids).await?;
            Ok::<_, sqlx::Error>(
                found
                    .into_iter()
                    .filter_map(|p| Some((asked.remove(&p.id)?, p)))
                    .collect::<HashMap<String, Product>>(),
            )
        }
    };
    let started = Instant::now();
    let report = cache
        .warm(&keys, loader, &options)
        .await
        .context("could not warm the cache")?;
    let took = started.elapsed();
    bar.finish();
    db.close().await;

    if args.json {
        print_json(&serde_json::json!({
            "source": source,
            "cache": store,
            "namespace": namespace,
            "keys": report.total,
            "loaded": report.loaded,
            "cached_already": report.cached_already,
            "failed": report.failed,
            "skipped": foreign.len(),
            "first_skipped": foreign.first(),
            "seconds": took.as_secs_f64(),
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "keys: {}", report.total)?;
        writeln!(out, "loaded: {}", report.loaded)?;
        writeln!(out, "already cached: {}", report.cached_already)?;
        writeln!(out, "failed: {}", report.failed)?;
        writeln!(out, "time: {:.3}s", took.as_secs_f64())?;
        out.flush()?;
    }
    if let Some(e) = report.first_error {
        return Err(anyhow::Error::new(e).context(format!("{} keys failed", report.failed)));
    }
    anyhow::ensure!(report.failed == 0, "{} keys failed", report.failed);
    Ok(())
}

/// The demo's product cache: in process, or in Redis (checked to answer).
async fn build_cache(
    args: &WarmArgs,
    namespace: &str,
    exporter: Option<&Exporter>,
) -> anyhow::Result<Cache> {
    // A chunk's requests carry hundreds of keys (one script to take their
    // tokens, one to fill them): on a busy machine they can take longer than
    // the 250 ms a single read is given, and a timed-out fill leaves its
    // chunk unwarmed.
    let builder = Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(args.ttl))
        .backend_timeout(Duration::from_secs(2));
    let builder = export(builder, exporter);
    let builder = match &args.redis {
        Some(url) => builder.backend(checked_redis(url, args.cluster, namespace).await?),
        None => builder.backend(MemoryBackend::builder().max_entries(args.rows).build()),
    };
    builder
        .build()
        .context("invalid cache options (check --namespace)")
}

fn progress_bar(show: bool, total: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("warming [{bar:40}] {pos}/{len} {elapsed}")
        .map_or_else(
            |_| ProgressStyle::default_bar(),
            |s| s.progress_chars("=> "),
        );
    // On stderr: stdout is the summary's.
    ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        .with_style(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_keys_round_trip() {
        assert_eq!(product_key(42).as_str(), "product:42");
        assert_eq!(product_id("product:42"), Some(42));
        assert_eq!(product_id("user:42"), None);
        assert_eq!(product_id("product:x"), None);
    }
}
