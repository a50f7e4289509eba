//! `aside stats`: hit ratio and counters, from a running service's
//! Prometheus page (`--metrics-url`, aside's own series) or from Redis
//! itself (`--redis`, the server's keyspace figures).

mod http;
mod keyspace;
mod prometheus;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use serde_json::{Value, json};

use crate::connect::{checked_redis, redact};
use crate::output::{self, percent, print_json};
use aside::backend::RedisConnection;
use keyspace::{NamespaceKeys, Node, ServerFigures};
use prometheus::CacheFigures;
use redis::cluster_async::ClusterConnection;
use std::collections::BTreeMap;

/// How long connecting to the metrics endpoint, and reading its page, may
/// take each.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `aside stats`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["metrics_url", "redis"])))]
pub struct StatsArgs {
    /// A service's Prometheus page (http://host:port/metrics) with aside's
    /// metrics (a cache built with `metrics(true)`).
    #[arg(long, value_name = "URL")]
    metrics_url: Option<String>,
    /// A Redis (e.g. redis://127.0.0.1:6379): its keyspace hits and misses,
    /// evictions, expirations, memory and keys.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The --redis URL names a node of a Redis Cluster (any node): the
    /// figures are summed over its primaries, and listed per primary.
    #[arg(long, requires = "redis")]
    cluster: bool,
    /// With --metrics-url, only this cache; with --redis, also count this
    /// namespace's keys (by SCAN).
    #[arg(long)]
    namespace: Option<String>,
    /// One JSON document on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Reads the figures and prints them.
pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    match (&args.metrics_url, &args.redis) {
        (Some(url), _) => from_metrics(url, &args).await,
        (None, Some(url)) => from_redis(url, &args).await,
        (None, None) => anyhow::bail!("give --metrics-url or --redis"),
    }
}

async fn from_metrics(url: &str, args: &StatsArgs) -> anyhow::Result<()> {
    let page = http::get(url, HTTP_TIMEOUT).await?;
    let text = String::from_utf8(page).with_context(|| format!("the page at {url} is not text"))?;
    let samples = prometheus::parse(&text)
        .with_context(|| format!("the page at {url} is not a Prometheus text page"))?;
    let caches = prometheus::per_cache(&samples, args.namespace.as_deref());
    if caches.is_empty() {
        match &args.namespace {
            Some(ns) => anyhow::bail!("no aside metrics for cache {ns:?} at {url}"),
            None => anyhow::bail!(
                "no aside metrics at {url} (is the cache built with metrics(true), and its recorder the one serving this page?)"
            ),
        }
    }
    if args.json {
        let caches: serde_json::Map<String, Value> = caches
            .iter()
            .map(|(name, f)| (name.clone(), figures_json(f)))
            .collect();
        return print_json(&json!({ "source": "metrics", "url": url, "caches": caches }));
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(std::iter::once("cache").chain(caches.keys().map(String::as_str)));
    let measures: [(&str, Measure); 17] = [
        ("hit ratio", |f| percent(f.hit_ratio())),
        ("hits", |f| count(f.hits)),
        ("negative hits", |f| count(f.negative)),
        ("misses", |f| count(f.misses)),
        ("stale served", |f| count(f.stale_served)),
        ("fail-safe served", |f| count(f.fail_safe_served)),
        ("loads", |f| count(f.loads)),
        ("load errors", |f| count(f.load_errors)),
        ("mean load time", |f| {
            f.mean_load_seconds().map_or_else(
                || "-".to_owned(),
                |s| output::span(Duration::from_secs_f64(s)),
            )
        }),
        ("loads in flight", |f| count(f.loads_in_flight)),
        ("backend errors", |f| count(f.backend_errors)),
        ("backend timeouts", |f| count(f.backend_timeouts)),
        ("keys invalidated", |f| count(f.invalidated_keys)),
        ("tags invalidated", |f| count(f.invalidated_tags)),
        ("namespace invalidations", |f| {
            count(f.invalidated_namespaces)
        }),
        ("invalidations queued", |f| count(f.invalidations_queued)),
        ("breakers open", |f| {
            match (f.backend_breaker_open, f.loader_breaker_open) {
                (false, false) => "none",
                (true, false) => "backend",
                (false, true) => "loader",
                (true, true) => "backend, loader",
            }
            .to_owned()
        }),
    ];
    for (label, measure) in measures {
        table.add_row(std::iter::once(label.to_owned()).chain(caches.values().map(measure)));
    }
    for column in table.column_iter_mut().skip(1) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "aside metrics at {url}")?;
    writeln!(out, "{table}")?;
    out.flush()?;
    Ok(())
}

/// One row of the table: a figure of a cache, written out.
type Measure = fn(&CacheFigures) -> String;

/// Counters are integers; the text format writes them as floats.
fn count(v: f64) -> String {
    format!("{v:.0}")
}

fn figures_json(f: &CacheFigures) -> Value {
    json!({
        "hit_ratio": f.hit_ratio(),
        "requests": {
            "hit": f.hits,
            "miss": f.misses,
            "stale": f.stale,
            "negative": f.negative,
        },
        "loads": f.loads,
        "load_errors": f.load_errors,
        "mean_load_seconds": f.mean_load_seconds(),
        "loads_in_flight": f.loads_in_flight,
        "backend_errors": f.backend_errors,
        "backend_timeouts": f.backend_timeouts,
        "invalidations": {
            "key": f.invalidated_keys,
            "tag": f.invalidated_tags,
            "namespace": f.invalidated_namespaces,
        },
        "invalidations_queued": f.invalidations_queued,
        "stale_served": f.stale_served,
        "fail_safe_served": f.fail_safe_served,
        "breaker_open": {
            "backend": f.backend_breaker_open,
            "loader": f.loader_breaker_open,
        },
    })
}

async fn from_redis(url: &str, args: &StatsArgs) -> anyhow::Result<()> {
    let probe_namespace = args.namespace.as_deref().unwrap_or("aside");
    let backend = checked_redis(url, args.cluster, probe_namespace).await?;
    let unreachable = || format!("could not read the figures of Redis at {}", redact(url));
    let (server, namespace, nodes) = match backend.connection() {
        RedisConnection::Cluster(mut conn) => {
            let nodes = cluster_figures(&mut conn, args.namespace.as_deref())
                .await
                .with_context(unreachable)?;
            let mut server = ServerFigures::default();
            let mut keys = args.namespace.as_ref().map(|_| NamespaceKeys::default());
            for (figures, found) in nodes.values() {
                server.add(figures);
                if let (Some(keys), Some(found)) = (keys.as_mut(), found) {
                    keys.add(found);
                }
            }
            (server, keys, Some(nodes))
        }
        mut conn => {
            let server = keyspace::server(&mut conn)
                .await
                .with_context(unreachable)?;
            let keys = match &args.namespace {
                Some(ns) => Some(
                    keyspace::namespace_keys(&mut Node::Connection(&mut conn), ns)
                        .await
                        .with_context(unreachable)?,
                ),
                None => None,
            };
            (server, keys, None)
        }
    };
    let namespace = args.namespace.as_ref().zip(namespace);
    if args.json {
        return print_json(&json!({
            "source": "redis",
            "url": redact(url),
            "hit_ratio": server.hit_ratio(),
            "keyspace_hits": server.keyspace_hits,
            "keyspace_misses": server.keyspace_misses,
            "evicted_keys": server.evicted_keys,
            "expired_keys": server.expired_keys,
            "used_memory": server.used_memory,
            "keys": server.keys,
            "namespace": namespace.as_ref().map(|(name, n)| json!({
                "name": name,
                "entries": n.entries,
                "tag_tokens": n.tag_tokens,
                "namespace_token": n.namespace_token,
                "other_keys": n.other,
            })),
            "cluster_primaries": nodes.as_ref().map(|nodes| nodes.iter().map(|(node, (f, keys))| json!({
                "node": node,
                "keyspace_hits": f.keyspace_hits,
                "keyspace_misses": f.keyspace_misses,
                "evicted_keys": f.evicted_keys,
                "expired_keys": f.expired_keys,
                "used_memory": f.used_memory,
                "keys": f.keys,
                "namespace_entries": keys.as_ref().map(|k| k.entries),
            })).collect::<Vec<_>>()),
        }));
    }
    let mut rows = vec![
        ("keyspace hit ratio", percent(server.hit_ratio())),
        ("keyspace hits", server.keyspace_hits.to_string()),
        ("keyspace misses", server.keyspace_misses.to_string()),
        ("evicted keys", server.evicted_keys.to_string()),
        ("expired keys", server.expired_keys.to_string()),
        ("used memory", output::bytes(server.used_memory)),
        ("keys (DBSIZE)", server.keys.to_string()),
    ];
    if let Some((_, n)) = &namespace {
        rows.push(("namespace entries", n.entries.to_string()));
        rows.push(("namespace tag tokens", n.tag_tokens.to_string()));
        rows.push((
            "namespace version token",
            if n.namespace_token {
                "present"
            } else {
                "absent"
            }
            .to_owned(),
        ));
        rows.push(("markers, leases, flags", n.other.to_string()));
    }
    let table = output::pairs(rows, true);
    let mut out = std::io::stdout().lock();
    let what = match &nodes {
        Some(nodes) => format!(
            "Redis Cluster at {} ({} primaries, figures summed)",
            redact(url),
            nodes.len()
        ),
        None => format!("Redis at {}", redact(url)),
    };
    match &namespace {
        Some((ns, _)) => writeln!(out, "{what} (namespace {ns:?})")?,
        None => writeln!(out, "{what}")?,
    }
    writeln!(out, "{table}")?;
    if let Some(nodes) = &nodes {
        for (node, (f, keys)) in nodes {
            let entries = keys
                .as_ref()
                .map(|k| format!(", {} namespace entries", k.entries))
                .unwrap_or_default();
            writeln!(
                out,
                "  {node}: {} keys, {} hits, {} misses, {} evicted, {}{entries}",
                f.keys,
                f.keyspace_hits,
                f.keyspace_misses,
                f.evicted_keys,
                output::bytes(f.used_memory)
            )?;
        }
    }
    writeln!(
        out,
        "(server-wide figures since its start or CONFIG RESETSTAT: every client's reads count, not only aside's)"
    )?;
    out.flush()?;
    Ok(())
}

/// Each primary's figures, and its keys of `namespace` when one is given.
async fn cluster_figures(
    conn: &mut ClusterConnection,
    namespace: Option<&str>,
) -> anyhow::Result<BTreeMap<String, (ServerFigures, Option<NamespaceKeys>)>> {
    let mut out = BTreeMap::new();
    for (node, figures) in keyspace::cluster_servers(conn).await? {
        let keys = match namespace {
            Some(ns) => {
                let route = keyspace::primary(&node)?;
                Some(
                    keyspace::namespace_keys(&mut Node::Primary(conn, route), ns)
                        .await
                        .with_context(|| format!("primary {node}"))?,
                )
            }
            None => None,
        };
        out.insert(node, (figures, keys));
    }
    Ok(out)
}
