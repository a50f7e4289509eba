//! `aside listen`: the PostgreSQL change bridge as a process of its own.
//! Committed row changes in the mapped tables invalidate a Redis-backed
//! cache until Ctrl-C.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use aside::backend::RedisBackend;
use aside::bridge::{BridgeEvent, ChangeBridge, DEFAULT_CHANNEL, TableMap};
use aside::{Cache, Invalidation};
use sqlx::postgres::PgPoolOptions;

use crate::connect::redact;

use crate::exporter::{MetricsArgs, export};

/// How long queued invalidations may take to land when stopping.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// Options of `aside listen`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// The PostgreSQL to listen to, e.g. postgres://user@127.0.0.1:5432/shop.
    #[arg(long, value_name = "URL")]
    pg_url: String,
    /// The Redis holding the cache, e.g. redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL")]
    redis_url: String,
    /// The --redis-url names a node of a Redis Cluster (any node: the others
    /// are found from it).
    #[arg(long)]
    cluster: bool,
    /// The cache's namespace: the one the application's cache is built with.
    /// The application's cache must use namespace_invalidation(true).
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// The application cache's schema version, if it sets one.
    #[arg(long, value_name = "N")]
    schema_version: Option<u32>,
    /// What a change to a table invalidates, repeatable:
    /// TABLE:key=TEMPLATE,tag=TEMPLATE,... or TABLE:namespace, e.g.
    /// 'products:key=product:{id},tag=category:{category_id}'. TABLE may be
    /// schema.table. Templates render as the application's keys must.
    #[arg(long = "map", value_name = "SPEC", required = true, value_parser = parse_map)]
    maps: Vec<TableMap>,
    /// The NOTIFY channel the triggers send on.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CHANNEL)]
    channel: String,
    /// Install (or replace) the trigger function and the mapped tables'
    /// triggers before listening.
    #[arg(long)]
    install: bool,
    /// Print the SQL that installs the triggers, and exit.
    #[arg(long, conflicts_with_all = ["install", "metrics_addr"])]
    print_sql: bool,
    /// No line per invalidation (errors are still reported on stderr).
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    metrics: MetricsArgs,
}

fn parse_map(spec: &str) -> Result<TableMap, String> {
    spec.parse::<TableMap>().map_err(|e| e.to_string())
}

/// Runs the bridge until Ctrl-C.
pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    // Not before `--print-sql`, which serves nothing.
    let exporter = if args.print_sql {
        None
    } else {
        args.metrics.start().await?
    };
    let mut builder = export(
        Cache::builder()
            .namespace(args.namespace.clone())
            .namespace_invalidation(true),
        exporter.as_ref(),
    );
    if let Some(version) = args.schema_version {
        builder = builder.schema_version(version);
    }
    let backend = if args.cluster {
        RedisBackend::cluster([args.redis_url.as_str()]).build()
    } else {
        RedisBackend::new(&args.redis_url)
    }
    .with_context(|| format!("--redis-url {}", redact(&args.redis_url)))?;
    let cache = builder.backend(backend).build().context("the cache")?;

    let quiet = args.quiet;
    let namespace = args.namespace.clone();
    let mut bridge = ChangeBridge::builder(cache.clone(), args.pg_url.clone())
        .channel(args.channel.clone())
        .on_event(move |event| report(event, &namespace, quiet));
    for map in &args.maps {
        bridge = bridge.table(map.clone());
    }
    let bridge = bridge.build()?;

    if args.print_sql {
        let mut out = std::io::stdout().lock();
        for map in &args.maps {
            writeln!(out, "{}", bridge.install_sql(map.table())?)?;
        }
        return Ok(());
    }

    cache
        .ping()
        .await
        .with_context(|| format!("could not reach Redis at {}", redact(&args.redis_url)))?;
    let pg = redact(&args.pg_url);
    if args.install {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&args.pg_url)
            .await
            .with_context(|| format!("could not reach PostgreSQL at {pg}"))?;
        bridge.install(&pool).await?;
        pool.close().await;
        let tables: Vec<&str> = args.maps.iter().map(TableMap::table).collect();
        say(
            quiet,
            &format!("installed triggers on {}", tables.join(", ")),
        );
    }
    let handle = bridge
        .start()
        .await
        .with_context(|| format!("could not listen on PostgreSQL at {pg}"))?;
    say(
        quiet,
        &format!(
            "listening on channel {:?} of {pg} for namespace {:?} (Ctrl-C to stop)",
            args.channel, args.namespace
        ),
    );

    tokio::signal::ctrl_c()
        .await
        .context("could not wait for Ctrl-C")?;
    let stats = handle.stop().await;
    if let Err(e) = cache.flush_invalidations(FLUSH_WITHIN).await {
        let _ = writeln!(std::io::stderr().lock(), "warning: {e}");
    }
    say(
        quiet,
        &format!(
            "stopped: {} notifications, {} keys and {} tags invalidated, {} namespace \
             invalidations ({} gaps), {} malformed, {} errors",
            stats.notifications,
            stats.keys_invalidated,
            stats.tags_invalidated,
            stats.namespace_invalidations,
            stats.gaps,
            stats.malformed,
            stats.errors
        ),
    );
    Ok(())
}

/// One line per event: what was invalidated on stdout (unless quiet),
/// trouble on stderr.
fn report(event: &BridgeEvent, namespace: &str, quiet: bool) {
    let queued = |o: &Invalidation| if o.is_applied() { "" } else { " (queued)" };
    match event {
        BridgeEvent::Invalidated {
            table,
            op,
            keys,
            tags,
            outcome,
        } => {
            let mut parts = Vec::new();
            if !keys.is_empty() {
                parts.push(format!("keys {}", keys.join(", ")));
            }
            if !tags.is_empty() {
                parts.push(format!("tags {}", tags.join(", ")));
            }
            let what = if parts.is_empty() {
                "nothing".to_owned()
            } else {
                parts.join("; ")
            };
            say(quiet, &format!("{op} {table}: {what}{}", queued(outcome)));
        }
        BridgeEvent::NamespaceInvalidated {
            reason,
            table,
            outcome,
        } => {
            let on = table
                .as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default();
            say(
                quiet,
                &format!(
                    "namespace {namespace:?} invalidated: {reason}{on}{}",
                    queued(outcome)
                ),
            );
        }
        BridgeEvent::Malformed { error } => {
            let _ = writeln!(std::io::stderr().lock(), "malformed notification: {error}");
        }
        BridgeEvent::Error { message } => {
            let _ = writeln!(std::io::stderr().lock(), "error: {message}");
        }
        // Listening is said once by `run`; reconnections show as gaps.
        _ => {}
    }
}

fn say(quiet: bool, line: &str) {
    if !quiet {
        // Nothing more useful to do if stdout is gone.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}
