//! Server-side figures of a Redis: `INFO stats` and `INFO memory`,
//! `DBSIZE`, and optionally a count of one namespace's keys by `SCAN`
//! (with the namespace escaped in the pattern: a namespace is data, never
//! a glob). On a Redis Cluster, the same per primary: `SCAN` sees only
//! the keys of the node it runs on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context as _;
use aside::backend::RedisConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};

use crate::connect::REDIS_TIMEOUT;

/// What `INFO` and `DBSIZE` said.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServerFigures {
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub evicted_keys: u64,
    pub expired_keys: u64,
    pub used_memory: u64,
    pub keys: u64,
}

impl ServerFigures {
    /// The figures of two servers together (a cluster's primaries).
    pub fn add(&mut self, other: &ServerFigures) {
        self.keyspace_hits += other.keyspace_hits;
        self.keyspace_misses += other.keyspace_misses;
        self.evicted_keys += other.evicted_keys;
        self.expired_keys += other.expired_keys;
        self.used_memory += other.used_memory;
        self.keys += other.keys;
    }

    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.keyspace_hits + self.keyspace_misses;
        (total > 0).then(|| self.keyspace_hits as f64 / total as f64)
    }
}

/// One namespace's keys, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NamespaceKeys {
    /// Entries (`{ns:key}`).
    pub entries: u64,
    /// Tag tokens (`{ns}:t:<tag>`).
    pub tag_tokens: u64,
    /// The namespace's version token (`{ns}:n`) is there.
    pub namespace_token: bool,
    /// Markers, leases and waiter flags of entries.
    pub other: u64,
}

impl NamespaceKeys {
    /// The keys found on two nodes together.
    pub fn add(&mut self, other: &NamespaceKeys) {
        self.entries += other.entries;
        self.tag_tokens += other.tag_tokens;
        self.namespace_token |= other.namespace_token;
        self.other += other.other;
    }
}

/// Where a command goes: the one server, or one primary of a cluster.
pub(crate) enum Node<'a> {
    /// The connection's server (on a cluster, wherever redis-rs routes).
    Connection(&'a mut RedisConnection),
    /// A primary of a cluster, by its `host:port`.
    Primary(&'a mut ClusterConnection, RoutingInfo),
}

impl Node<'_> {
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
        what: &str,
    ) -> anyhow::Result<T> {
        let answer = async {
            match self {
                Node::Connection(conn) => cmd.query_async::<T>(&mut **conn).await,
                Node::Primary(conn, route) => {
                    let value = conn.route_command(cmd.clone(), route.clone()).await?;
                    Ok(redis::from_redis_value(value)?)
                }
            }
        };
        tokio::time::timeout(REDIS_TIMEOUT, answer)
            .await
            .map_err(|_| anyhow::anyhow!("{what}: no answer within {REDIS_TIMEOUT:?}"))?
            .with_context(|| what.to_owned())
    }
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut RedisConnection,
    cmd: &redis::Cmd,
    what: &str,
) -> anyhow::Result<T> {
    Node::Connection(conn).query(cmd, what).await
}

/// `INFO stats`, `INFO memory`, `DBSIZE`.
pub(crate) async fn server(conn: &mut RedisConnection) -> anyhow::Result<ServerFigures> {
    let stats: String = query(conn, redis::cmd("INFO").arg("stats"), "INFO stats").await?;
    let memory: String = query(conn, redis::cmd("INFO").arg("memory"), "INFO memory").await?;
    let keys: u64 = query(conn, &redis::cmd("DBSIZE"), "DBSIZE").await?;
    figures(&stats, &memory, keys)
}

/// The figures of each primary of a cluster, by `host:port` (sorted).
///
/// Each command goes to every primary at once and comes back as one
/// answer per node (redis-rs's routing to all primaries, answers kept per
/// node). A node that answers with an error fails the whole command; a
/// node redis-rs holds no connection to is left out of such a command
/// without a word, so the answers are checked against the primaries that
/// `CLUSTER SLOTS` lists: sums over part of the cluster are an error, not
/// figures.
pub(crate) async fn cluster_servers(
    conn: &mut ClusterConnection,
) -> anyhow::Result<BTreeMap<String, ServerFigures>> {
    let every = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::Special),
    ));
    let mut all = Node::Primary(conn, every);
    let stats: BTreeMap<String, String> = all
        .query(redis::cmd("INFO").arg("stats"), "INFO stats")
        .await?;
    let memory: BTreeMap<String, String> = all
        .query(redis::cmd("INFO").arg("memory"), "INFO memory")
        .await?;
    let keys: BTreeMap<String, u64> = all.query(&redis::cmd("DBSIZE"), "DBSIZE").await?;
    let mut out = BTreeMap::new();
    for (node, stats) in &stats {
        let (Some(memory), Some(keys)) = (memory.get(node), keys.get(node)) else {
            anyhow::bail!("primary {node} answered INFO stats but not INFO memory or DBSIZE");
        };
        let figures = figures(stats, memory, *keys).with_context(|| format!("primary {node}"))?;
        out.insert(node.clone(), figures);
    }
    let owners = slot_owners(conn).await?;
    let missing: Vec<&String> = owners.iter().filter(|n| !out.contains_key(*n)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} of the cluster's {} primaries answered; no answer from {}",
            owners.len() - missing.len(),
            owners.len(),
            missing
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

/// The primaries that own slots, by `host:port`, as `CLUSTER SLOTS` lists
/// them: each range is `[start, end, [host, port, id, ...], replicas...]`.
async fn slot_owners(conn: &mut ClusterConnection) -> anyhow::Result<BTreeSet<String>> {
    let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let ranges: Vec<redis::Value> = Node::Primary(conn, any)
        .query(redis::cmd("CLUSTER").arg("SLOTS"), "CLUSTER SLOTS")
        .await?;
    let mut owners = BTreeSet::new();
    for range in ranges {
        let primary = match range {
            redis::Value::Array(mut parts) if parts.len() >= 3 => parts.swap_remove(2),
            other => anyhow::bail!("CLUSTER SLOTS: unexpected range {other:?}"),
        };
        let (host, port): (String, u16) = match primary {
            redis::Value::Array(node) if node.len() >= 2 => (
                redis::from_redis_value(node[0].clone()).context("CLUSTER SLOTS: host")?,
                redis::from_redis_value(node[1].clone()).context("CLUSTER SLOTS: port")?,
            ),
            other => anyhow::bail!("CLUSTER SLOTS: unexpected node {other:?}"),
        };
        owners.insert(format!("{host}:{port}"));
    }
    Ok(owners)
}

/// Routes a command to the primary at `host:port`.
pub(crate) fn primary(node: &str) -> anyhow::Result<RoutingInfo> {
    let (host, port) = node
        .rsplit_once(':')
        .with_context(|| format!("{node:?} is not host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("{node:?} is not host:port"))?;
    Ok(RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    }))
}

fn figures(stats: &str, memory: &str, keys: u64) -> anyhow::Result<ServerFigures> {
    let text = format!("{stats}\n{memory}");
    let info = info_fields(&text);
    let field = |name: &str| -> anyhow::Result<u64> {
        info.get(name)
            .with_context(|| format!("INFO has no {name}"))?
            .parse()
            .with_context(|| format!("INFO {name} is not a number"))
    };
    Ok(ServerFigures {
        keyspace_hits: field("keyspace_hits")?,
        keyspace_misses: field("keyspace_misses")?,
        evicted_keys: field("evicted_keys")?,
        expired_keys: field("expired_keys")?,
        used_memory: field("used_memory")?,
        keys,
    })
}

/// The `field:value` lines of an `INFO` reply.
fn info_fields(info: &str) -> HashMap<&str, &str> {
    info.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .collect()
}

/// `s` with Redis glob characters escaped: it matches itself only.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Counts the keys of `namespace` with `SCAN` (never `KEYS`, which blocks
/// the server): every key starting `{namespace`, then classified exactly.
pub(crate) async fn namespace_keys(
    node: &mut Node<'_>,
    namespace: &str,
) -> anyhow::Result<NamespaceKeys> {
    let pattern = format!("{{{}*", glob_escape(namespace));
    let entry = format!("{{{namespace}:");
    let tokens = format!("{{{namespace}}}:");
    let mut found = NamespaceKeys::default();
    let mut cursor: u64 = 0;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, keys): (u64, Vec<String>) = node.query(&scan, "SCAN").await?;
        for key in &keys {
            classify(key, &entry, &tokens, &mut found);
        }
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

fn classify(key: &str, entry: &str, tokens: &str, found: &mut NamespaceKeys) {
    if let Some(token) = key.strip_prefix(tokens) {
        if token == "n" {
            found.namespace_token = true;
        } else if token.starts_with("t:") {
            found.tag_tokens += 1;
        }
    } else if key.starts_with(entry) {
        if key.ends_with('}') {
            found.entries += 1;
        } else {
            found.other += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("shop"), "shop");
        assert_eq!(glob_escape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
    }

    #[test]
    fn keys_are_classified_exactly() {
        let mut found = NamespaceKeys::default();
        for key in [
            "{shop:product:1}",
            "{shop:product:1}:g",
            "{shop:product:2}:l",
            "{shop:a}b}",
            "{shop}:n",
            "{shop}:t:category:7",
            "{shopping:product:1}",
            "{shopping}:n",
        ] {
            classify(key, "{shop:", "{shop}:", &mut found);
        }
        assert_eq!(
            found,
            NamespaceKeys {
                entries: 2,
                tag_tokens: 1,
                namespace_token: true,
                other: 2
            }
        );
    }

    #[test]
    fn info_lines_are_read() {
        let info = info_fields("# Stats\r\nkeyspace_hits:12\r\nkeyspace_misses:3\r\n");
        assert_eq!(info.get("keyspace_hits"), Some(&"12"));
        assert_eq!(info.get("keyspace_misses"), Some(&"3"));
    }
}
