//! `aside invalidate`: keys, tags or a whole namespace, through the
//! library's invalidations (so markers go with the keys and loads in
//! flight do not cache what they read).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use aside::Invalidation;
use serde_json::json;

use crate::connect::{redact, redis_cache};
use crate::output::print_json;

/// How long a queued invalidation (Redis stopped answering between the
/// check and the write) is retried before the command gives up: the queue
/// lives in this process, which is about to exit.
const FLUSH_WITHIN: Duration = Duration::from_secs(3);

/// Options of `aside invalidate`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["key", "tag", "all_namespace"])))]
pub struct InvalidateArgs {
    /// The Redis the cache uses (e.g. redis://127.0.0.1:6379).
    #[arg(long, value_name = "URL")]
    redis: String,
    /// The Redis URL names a node of a Redis Cluster (any node: the others
    /// are found from it).
    #[arg(long)]
    cluster: bool,
    /// The cache's namespace.
    #[arg(long)]
    namespace: String,
    /// The cache's schema version, if it sets one (`schema_version(n)`).
    #[arg(long, value_name = "N")]
    schema_version: Option<u32>,
    /// Keys to remove (with their markers), as the service names them.
    #[arg(long, value_name = "KEY", num_args = 1..)]
    key: Vec<String>,
    /// Tags whose entries become unreadable (one write per tag).
    #[arg(long, value_name = "TAG", num_args = 1..)]
    tag: Vec<String>,
    /// Every entry of the namespace becomes unreadable. Only entries of
    /// caches built with namespace_invalidation(true) record the
    /// namespace's version; others are not affected.
    #[arg(long)]
    all_namespace: bool,
    /// One JSON document on stdout instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// What was asked for.
enum What<'a> {
    Keys(&'a [String]),
    Tags(&'a [String]),
    Namespace,
}

/// Applies the invalidation and says what was done.
pub async fn run(args: InvalidateArgs) -> anyhow::Result<()> {
    let what = if args.all_namespace {
        What::Namespace
    } else if !args.tag.is_empty() {
        What::Tags(&args.tag)
    } else {
        What::Keys(&args.key)
    };
    let all = args.all_namespace;
    let cache = redis_cache(
        &args.redis,
        args.cluster,
        &args.namespace,
        args.schema_version,
        |b| b.namespace_invalidation(all),
    )
    .await?;
    let outcome = match what {
        What::Keys(keys) => cache.invalidate_many(keys).await,
        What::Tags(tags) => cache.invalidate_tags(tags).await,
        What::Namespace => cache.invalidate_namespace().await,
    }
    .context("nothing was invalidated")?;
    if outcome == Invalidation::Queued {
        // Redis stopped answering after the check. The cache keeps the
        // invalidation and retries it, but only as long as this process
        // lives: give it a little while, then say it did not happen.
        cache
            .flush_invalidations(FLUSH_WITHIN)
            .await
            .with_context(|| {
                format!(
                    "Redis at {} did not take the invalidation, which may not have been applied \
                 (it was queued, and the queue ends with this command): run it again",
                    redact(&args.redis)
                )
            })?;
    }
    let (kind, names): (&str, &[String]) = match what {
        What::Keys(keys) => ("keys", keys),
        What::Tags(tags) => ("tags", tags),
        What::Namespace => ("namespace", &[]),
    };
    if args.json {
        return print_json(&json!({
            "namespace": args.namespace,
            "kind": kind,
            "names": names,
            "applied": true,
        }));
    }
    let mut out = std::io::stdout().lock();
    match what {
        What::Keys(keys) => writeln!(
            out,
            "invalidated {} key{} in namespace {:?}: {}",
            keys.len(),
            if keys.len() == 1 { "" } else { "s" },
            args.namespace,
            quoted(keys)
        )?,
        What::Tags(tags) => writeln!(
            out,
            "invalidated {} tag{} in namespace {:?} (their entries are unreadable): {}",
            tags.len(),
            if tags.len() == 1 { "" } else { "s" },
            args.namespace,
            quoted(tags)
        )?,
        What::Namespace => writeln!(
            out,
            "invalidated namespace {:?} (its entries that record the namespace version are unreadable)",
            args.namespace
        )?,
    }
    out.flush()?;
    Ok(())
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
