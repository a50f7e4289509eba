//! `aside inspect KEY`: one entry as stored in Redis, decoded: its keys in
//! Redis, expiry, codec and size, the tag and namespace tokens it was
//! stamped with beside the current ones (is it still valid?), its lease,
//! and its value.

use std::io::Write as _;
use std::time::SystemTime;

use anyhow::Context as _;
use aside::{Codec, EntryInfo};
use serde_json::{Value, json};

use crate::connect::redis_cache;
use crate::output::{self, print_json, relative, span, utc};

/// Options of `aside inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The key, as the service hands it to the cache (`product:42`).
    key: String,
    /// The Redis the cache uses (e.g. redis://127.0.0.1:6379).
    #[arg(long, value_name = "URL")]
    redis: String,
    /// The Redis URL names a node of a Redis Cluster (any node: the others
    /// are found from it).
    #[arg(long)]
    cluster: bool,
    /// The cache's namespace.
    #[arg(long, default_value = "aside")]
    namespace: String,
    /// The cache's schema version, if it sets one (`schema_version(n)`).
    #[arg(long, value_name = "N")]
    schema_version: Option<u32>,
    /// One JSON document on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Reads the entry and prints it.
pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let cache = redis_cache(
        &args.redis,
        args.cluster,
        &args.namespace,
        args.schema_version,
        |b| b,
    )
    .await?;
    let info = cache
        .inspect(&args.key)
        .await
        .with_context(|| format!("could not inspect key {:?}", args.key))?;
    let Some(info) = info else {
        anyhow::bail!(
            "no entry for key {:?} in namespace {:?}",
            args.key,
            args.namespace
        );
    };
    let now = SystemTime::now();
    if args.json {
        return print_json(&document(&info, &args.namespace, now));
    }
    let table = output::pairs(rows(&info, &args.namespace, now), false);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{table}")?;
    out.flush()?;
    Ok(())
}

/// Where the entry is in its life at `now`.
fn state(info: &EntryInfo, now: SystemTime) -> &'static str {
    if !info.is_current() {
        "invalidated"
    } else if now >= info.expires_at {
        "expired"
    } else if now >= info.fresh_until {
        "stale"
    } else {
        "fresh"
    }
}

fn codec(c: Codec) -> &'static str {
    match c {
        Codec::MessagePack => "messagepack",
        Codec::Json => "json",
        _ => "unknown",
    }
}

/// The value as JSON if it decodes without its Rust type, or why not.
fn value(info: &EntryInfo) -> Result<Option<Value>, String> {
    info.decode::<Value>().map_err(|e| {
        let mut why = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            why = format!("{why}: {source}");
        }
        why
    })
}

/// Tokens are 63-bit: written as strings, so that JSON readers that keep
/// numbers as doubles do not round them.
fn token(t: Option<u64>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_string()))
}

fn document(info: &EntryInfo, namespace: &str, now: SystemTime) -> Value {
    let ms = output::unix_ms;
    let (value, value_error) = match value(info) {
        Ok(v) => (v.unwrap_or(Value::Null), Value::Null),
        Err(why) => (Value::Null, Value::String(why)),
    };
    let lease = match (&info.storage.lease_key, info.storage.lease_held) {
        (Some(key), Some(held)) => json!({ "key": key, "held": held }),
        _ => Value::Null,
    };
    let dependencies: Vec<Value> = info
        .dependencies
        .iter()
        .map(|d| {
            json!({
                "tag": d.tag,
                "namespace": d.tag.is_none(),
                "storage_key": d.storage_key,
                "recorded": token(Some(d.recorded)),
                "current": token(d.current),
                "holds": d.holds(),
            })
        })
        .collect();
    json!({
        "key": info.key,
        "namespace": namespace,
        "backend_key": info.backend_key,
        "storage_key": info.storage.entry_key,
        "state": state(info, now),
        "current": info.is_current(),
        "readable": info.is_readable_at(now),
        "negative": info.negative,
        "codec": codec(info.codec),
        "compressed": info.compressed,
        "size": info.size,
        "payload_size": info.payload_size,
        "written_at_ms": ms(info.written_at),
        "fresh_until_ms": ms(info.fresh_until),
        "expires_at_ms": ms(info.expires_at),
        "pttl_ms": info.storage.expires_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "load_duration_us": u64::try_from(info.load_duration.as_micros()).unwrap_or(u64::MAX),
        "dependencies": dependencies,
        "lease": lease,
        "value": value,
        "value_error": value_error,
    })
}

fn rows(info: &EntryInfo, namespace: &str, now: SystemTime) -> Vec<(&'static str, String)> {
    let when = |t: SystemTime| format!("{} ({})", utc(t), relative(t, now));
    let mut rows = vec![
        ("key", info.key.clone()),
        ("namespace", namespace.to_owned()),
        ("redis key", info.storage.entry_key.clone()),
        (
            "state",
            format!(
                "{}{}",
                state(info, now),
                if info.is_readable_at(now) {
                    ""
                } else {
                    " (no read returns it)"
                }
            ),
        ),
        (
            "kind",
            if info.negative {
                "negative (a cached \"not found\")".to_owned()
            } else {
                "value".to_owned()
            },
        ),
        (
            "ttl in redis",
            info.storage
                .expires_in
                .map_or_else(|| "none".to_owned(), span),
        ),
        ("written at", when(info.written_at)),
        ("fresh until", when(info.fresh_until)),
        ("expires at", when(info.expires_at)),
        ("load took", span(info.load_duration)),
        (
            "encoding",
            format!(
                "{}{}",
                codec(info.codec),
                if info.compressed { ", lz4" } else { "" }
            ),
        ),
        (
            "size",
            format!(
                "{} (payload {} B)",
                output::bytes(info.size as u64),
                info.payload_size
            ),
        ),
    ];
    if info.dependencies.is_empty() {
        rows.push(("tokens", "none (no tags, no namespace version)".to_owned()));
    }
    for d in &info.dependencies {
        let label = d
            .tag
            .as_ref()
            .map_or_else(|| "namespace version".to_owned(), |t| format!("tag {t:?}"));
        let now = d
            .current
            .map_or_else(|| "absent".to_owned(), |c| c.to_string());
        let verdict = if d.holds() { "holds" } else { "invalidated" };
        rows.push((
            "token",
            format!(
                "{label} ({}): recorded {}, now {now}: {verdict}",
                d.storage_key, d.recorded
            ),
        ));
    }
    let lease = match (&info.storage.lease_key, info.storage.lease_held) {
        (Some(key), Some(true)) => format!("held ({key}): a load is running"),
        (Some(key), _) => format!("none ({key})"),
        (None, _) => "unknown (the backend has no leases)".to_owned(),
    };
    rows.push(("lease", lease));
    let shown = match value(info) {
        Ok(Some(v)) => serde_json::to_string_pretty(&v).unwrap_or_else(|e| e.to_string()),
        Ok(None) => "none (negative entry)".to_owned(),
        Err(why) => format!(
            "{} B that do not decode without their type ({why})",
            info.payload_size
        ),
    };
    rows.push(("value", shown));
    rows
}
