//! The Redis backend on a Redis Cluster (the `cluster` feature).
//!
//! On one Redis, each operation is one atomic script over the entry's keys
//! and the version tokens it depends on. On a cluster a script may only
//! touch one slot, and an entry (`{ns:key}`, `{ns:key}:g|l|w`) and its
//! namespace's tokens (`{ns}:n`, `{ns}:t:<tag>`) hash to different slots.
//! So each operation runs in steps, one script per slot:
//!
//! - `acquire`: the tokens are read (or created fresh when absent) on the
//!   namespace's slot first, then the lease request runs on each key's
//!   slot (entry, marker, lease). Both steps finish before the loader runs.
//! - `fill`: the tokens are compared with the load's and, if they hold,
//!   extended to the entry's TTL (one script on the namespace's slot; an
//!   extension never re-creates a token), then FILL runs on each key's slot
//!   (marker and lease checked atomically with the write). Two round trips.
//! - `set`: SET on each key's slot and the extension of the tokens, at once.
//!
//! An entry without tags nor namespace invalidation has no tokens: its
//! operations are the single-Redis ones, one script on its slot.
//! - Reads (`MGET` of entries and tokens), deletions (`DEL`) and batches
//!   are grouped by slot here, one command or script per slot, sent
//!   concurrently on the multiplexed connection. (Not left to redis-rs's
//!   own split of a multi-slot `MGET` or `DEL`: it drops the slots missing
//!   from its map of the cluster, failing the read and, worse, reporting a
//!   `DEL` done with keys left.)
//!
//! # Why this keeps the consistency promise
//! The fill no longer checks the tokens atomically with its write. It does
//! not need to:
//! - Every read that returns an entry with dependencies (`get`,
//!   `get_or_load`'s hit and re-check, `get_many`) compares the tokens the
//!   entry recorded with the current tokens, read after the read began.
//!   An invalidation removes the tokens before it returns `Applied`, and a
//!   removed token only comes back as a fresh random one. So a read that
//!   begins after an `Applied` invalidation finds the token absent or
//!   different, and the entry misses, whether or not the fill that wrote it
//!   checked the tokens.
//! - A fill the backend accepts also proves its value current to the
//!   callers of this process that joined the load before the fill was
//!   sent. That is why the fill compares the tokens itself, after it was
//!   sent: an invalidation applied before such a caller began has removed
//!   the token before the comparison, which then refuses the fill.
//! - Markers and leases live in the key's slot, so the key-level checks
//!   (an invalidation of the key, the lease) stay atomic with the write.
//! - A failed extension only lets a token lapse before its entry: the entry
//!   then misses early (safe; it costs a reload). Extending before the
//!   write (the fill) or beside it (`set`) is safe for the same reason, and
//!   because an extension never creates a token.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::try_join_all;

use super::conn::RedisConnection;
use super::scripts::{CHECK, EXTEND, TOKENS, data, token_key};
use super::steps::{self, Steps};
use super::wait::{ReplicaWait, acknowledged, del_and_wait};
use super::{failed, malformed, px, token};
use crate::backend::{
    AcquireRequest, Acquired, Entry, FillRequest, FillToken, LeaseAsk, SetRequest, fresh_token,
};
use crate::error::BackendError;

/// A Redis Cluster: one script per slot, the tokens in steps of their own.
#[derive(Debug)]
pub(super) struct Cluster;

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, if not empty) or of the
/// whole key, modulo 16384.
pub(super) fn slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The indices of `keys`, grouped by the slot of `key_of(key)`.
fn by_slot<T>(items: &[T], key_of: impl Fn(&T) -> String) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(slot(&key_of(item))).or_default().push(i);
    }
    groups.into_values().collect()
}

fn pick<T: Clone>(items: &[T], indices: &[usize]) -> Vec<T> {
    indices
        .iter()
        .filter_map(|&i| items.get(i).cloned())
        .collect()
}

/// Reads the tokens `versions`, creating the absent ones: one TOKENS script
/// per slot (all of one namespace share one).
async fn tokens(
    conn: &RedisConnection,
    versions: &[String],
    ms: Duration,
) -> Result<Vec<u64>, BackendError> {
    let groups = by_slot(versions, |v| token_key(v));
    let replies = try_join_all(groups.iter().map(|group| {
        let mut invocation = TOKENS.prepare_invoke();
        invocation.arg(px(ms));
        for &i in group {
            invocation.key(token_key(&versions[i])).arg(fresh_token());
        }
        let mut conn = conn.clone();
        async move {
            invocation
                .invoke_async::<Vec<redis::Value>>(&mut conn)
                .await
        }
    }))
    .await
    .map_err(failed)?;
    let mut out = vec![0; versions.len()];
    for (group, reply) in groups.iter().zip(replies) {
        if reply.len() != group.len() {
            return Err(malformed("short token reply"));
        }
        for (&i, v) in group.iter().zip(reply) {
            out[i] = token(&v);
        }
    }
    Ok(out)
}

/// Whether the tokens `versions` still hold `expected` (an absent one, 0,
/// holds nothing); those that do are kept at least `ttl`, for the entry
/// about to be written. One CHECK script per slot (all of one namespace
/// share one). Extending before the write is harmless: an extension never
/// creates a token, and a refused write only leaves the tokens living a
/// little longer.
async fn tokens_hold(
    conn: &RedisConnection,
    versions: &[String],
    expected: &[u64],
    ttl: Duration,
) -> Result<bool, BackendError> {
    if versions.len() != expected.len() || expected.contains(&0) {
        return Ok(false);
    }
    let groups = by_slot(versions, |v| token_key(v));
    let held = try_join_all(groups.iter().map(|group| {
        let mut invocation = CHECK.prepare_invoke();
        invocation.arg(px(ttl));
        for &i in group {
            invocation
                .key(token_key(&versions[i]))
                .arg(expected[i].to_string());
        }
        let mut conn = conn.clone();
        async move { invocation.invoke_async::<u8>(&mut conn).await }
    }))
    .await
    .map_err(failed)?;
    Ok(held.iter().all(|&h| h == 1))
}

/// Keeps the tokens `versions` at least `ttl`, never re-creating one. A
/// failure only lets a token lapse before its entries (which then miss), so
/// it is logged, not returned: the write it follows did happen.
async fn extend(conn: &RedisConnection, versions: &[String], ttl: Duration) {
    let groups = by_slot(versions, |v| token_key(v));
    let result = try_join_all(groups.iter().map(|group| {
        let mut invocation = EXTEND.prepare_invoke();
        invocation.arg(px(ttl));
        for &i in group {
            invocation.key(token_key(&versions[i]));
        }
        let mut conn = conn.clone();
        async move { invocation.invoke_async::<()>(&mut conn).await }
    }))
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "aside: could not extend version tokens");
    }
}

#[async_trait::async_trait]
impl Steps for Cluster {
    /// The tokens once, then the lease request per slot.
    async fn acquire(
        &self,
        conn: &RedisConnection,
        r: &AcquireRequest<'_>,
    ) -> Result<Vec<Acquired>, BackendError> {
        let keys = r.keys;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = tokens(conn, r.versions, r.marker_ttl).await?;
        let groups = by_slot(keys, |k| data(k));
        let replies = try_join_all(groups.iter().map(|group| {
            let part = pick(keys, group);
            async move {
                super::acquire::acquire_scripted(conn, &part, &[], r.marker_ttl, r.lease).await
            }
        }))
        .await?;
        let mut out: Vec<Option<Acquired>> = vec![None; keys.len()];
        for (group, reply) in groups.iter().zip(replies) {
            for (&i, a) in group.iter().zip(reply) {
                let t = FillToken::new(a.token.marker(), tokens.clone())
                    .with_lease(a.token.lease().clone());
                out[i] = Some(Acquired::new(a.entry, t));
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| malformed("short batch lease reply")))
            .collect()
    }

    /// Each distinct set of tokens compared (and extended to the longest TTL
    /// stored under it) once on the namespace's slot, then FILL per slot for
    /// the fills whose tokens held, checking markers and leases there.
    async fn fill(
        &self,
        conn: &RedisConnection,
        r: &FillRequest<'_>,
    ) -> Result<Vec<bool>, BackendError> {
        let (fills, versions) = (r.fills, r.versions);
        let mut checked: Vec<(&[u64], bool)> = Vec::new();
        for (_, t) in fills {
            if checked.iter().any(|(v, _)| *v == t.versions()) {
                continue;
            }
            let longest = fills
                .iter()
                .filter(|(_, u)| u.versions() == t.versions())
                .map(|(e, _)| e.ttl)
                .max()
                .unwrap_or_default();
            let held = t.versions().len() == versions.len()
                && tokens_hold(conn, versions, t.versions(), longest).await?;
            checked.push((t.versions(), held));
        }
        let holds = |t: &FillToken| checked.iter().any(|(v, ok)| *ok && *v == t.versions());
        // A refused fill still gives its lease back, as FILL does.
        for (e, t) in fills.iter().filter(|(_, t)| !holds(t)) {
            if let Some(lease) = t.held_lease() {
                steps::release(conn, std::slice::from_ref(&e.key), lease).await?;
            }
        }
        let sent: Vec<usize> = (0..fills.len())
            .filter(|&i| fills.get(i).is_some_and(|(_, t)| holds(t)))
            .collect();
        let stripped: Vec<(Entry, FillToken)> = sent
            .iter()
            .filter_map(|&i| fills.get(i))
            .map(|(e, t)| {
                let token = FillToken::new(t.marker(), Vec::new()).with_lease(t.lease().clone());
                (e.clone(), token)
            })
            .collect();
        let groups = by_slot(&stripped, |(e, _)| data(&e.key));
        let replies = try_join_all(groups.iter().map(|group| {
            let part = pick(&stripped, group);
            async move { steps::fill(conn, &part, &[]).await }
        }))
        .await?;
        let mut stored = vec![false; fills.len()];
        for (group, reply) in groups.iter().zip(replies) {
            for (&j, ok) in group.iter().zip(reply) {
                if let Some(&i) = sent.get(j) {
                    stored[i] = ok;
                }
            }
        }
        Ok(stored)
    }

    /// SET per slot, and the tokens extended, at once.
    async fn set(&self, conn: &RedisConnection, r: &SetRequest<'_>) -> Result<(), BackendError> {
        let entries = r.entries;
        let groups = by_slot(entries, |e| data(&e.key));
        let longest = entries.iter().map(|e| e.ttl).max().unwrap_or_default();
        let writes = try_join_all(groups.iter().map(|group| {
            let part = pick(entries, group);
            async move { steps::set(conn, &part, &[]).await }
        }));
        let (written, ()) = tokio::join!(writes, extend(conn, r.versions, longest));
        written.map(|_| ())
    }

    /// RENEW per slot.
    async fn renew(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        lease: LeaseAsk<'_>,
    ) -> Result<Vec<bool>, BackendError> {
        let groups = by_slot(keys, |k| data(k));
        let replies = try_join_all(groups.iter().map(|group| {
            let part = pick(keys, group);
            async move { steps::renew(conn, &part, lease).await }
        }))
        .await?;
        let mut out = vec![false; keys.len()];
        for (group, reply) in groups.iter().zip(replies) {
            for (&i, ok) in group.iter().zip(reply) {
                out[i] = ok;
            }
        }
        Ok(out)
    }

    /// RELEASE per slot.
    async fn release(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        token: &str,
    ) -> Result<(), BackendError> {
        let groups = by_slot(keys, |k| data(k));
        try_join_all(groups.iter().map(|group| {
            let part = pick(keys, group);
            async move { steps::release(conn, &part, token).await }
        }))
        .await?;
        Ok(())
    }

    /// One `MGET` per slot, sent at once. Not one `MGET` that redis-rs
    /// splits: it leaves out the slots missing from its map of the cluster
    /// (while slots move, or a node is reconnected), and the read then
    /// fails. Each part here is a single-slot command, routed and
    /// redirected (`MOVED`, `ASK`) as any other.
    async fn read(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        versions: &[String],
    ) -> Result<Vec<Option<bytes::Bytes>>, BackendError> {
        let storage: Vec<String> = keys
            .iter()
            .map(|k| data(k))
            .chain(versions.iter().map(|v| token_key(v)))
            .collect();
        let groups = by_slot(&storage, String::clone);
        let replies = try_join_all(groups.iter().map(|group| {
            let mut mget = redis::cmd("MGET");
            for &i in group {
                mget.arg(&storage[i]);
            }
            let mut conn = conn.clone();
            async move {
                mget.query_async::<Vec<Option<bytes::Bytes>>>(&mut conn)
                    .await
            }
        }))
        .await
        .map_err(failed)?;
        let mut out = vec![None; storage.len()];
        for (group, reply) in groups.iter().zip(replies) {
            if reply.len() != group.len() {
                return Err(malformed("MGET answered a different number of keys"));
            }
            for (&i, value) in group.iter().zip(reply) {
                out[i] = value;
            }
        }
        Ok(out)
    }

    /// One `DEL` per slot, or one pipeline (`DEL` of the slot's keys, then
    /// `WAIT`) per slot sent to the slot's primary, sent at once. Not one
    /// `DEL` that redis-rs splits: it leaves out the slots missing from its
    /// map and reports the rest deleted, an invalidation reported applied
    /// with keys left.
    async fn delete(
        &self,
        conn: &RedisConnection,
        keys: Vec<String>,
        wait: Option<ReplicaWait>,
    ) -> Result<(), BackendError> {
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};

        let RedisConnection::Cluster(cluster) = conn else {
            return Err(malformed("a cluster backend on a single-node connection"));
        };
        let mut slots: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for key in keys {
            slots.entry(slot(&key)).or_default().push(key);
        }
        let sends = slots.into_iter().map(|(slot, keys)| {
            let mut conn = cluster.clone();
            async move {
                let Some(wait) = wait else {
                    return redis::cmd("DEL")
                        .arg(&keys)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(failed);
                };
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                let replies = conn
                    .route_pipeline(del_and_wait(&keys, wait), 0, 2, route)
                    .await
                    .map_err(failed)?;
                acknowledged(&replies, wait)
            }
        });
        try_join_all(sends).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{crc16, slot};

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` (and the cluster specification's
        // example: "123456789" is 0x31C3 = 12739).
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        // The specification's hash tag rules: the first `{`, the next `}`,
        // and an empty tag means the whole key.
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot("{ns:k}:g"), slot("ns:k"));
    }
}
