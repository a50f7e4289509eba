//! The Redis backend on a Redis Cluster (the `cluster` feature).
//!
//! On one Redis, each operation is one atomic script over the entry's keys
//! and the version tokens it depends on. On a cluster a script may only
//! touch one slot, and an entry (`{ns:key}`, `{ns:key}:g|l|w`) and its
//! namespace's tokens (`{ns}:n`, `{ns}:t:<tag>`) hash to different slots.
//! So each operation runs in steps, one script per slot:
//!
//! - `get_for_fill`: the tokens are read (or created fresh when absent) on
//!   the namespace's slot first, then ACQUIRE runs on the key's slot
//!   (entry, marker, lease). Both steps finish before the loader runs.
//! - `fill`: the tokens are compared with the load's and, if they hold,
//!   extended to the entry's TTL (one script on the namespace's slot; an
//!   extension never re-creates a token), then FILL runs on the key's slot
//!   (marker and lease checked atomically with the write). Two round trips.
//! - `set`: SET on the key's slot and the extension of the tokens, at once.
//!
//! An entry without tags nor namespace invalidation has no tokens: its
//! operations are the single-Redis ones, one script on its slot.
//! - Reads (`MGET` of entries and tokens) and deletions (`DEL`) are split
//!   per slot by redis-rs's cluster connection; batches are grouped by slot
//!   here, one script per slot, sent concurrently on the multiplexed
//!   connection.
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
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Script;

use super::scripts::{ACQUIRE, data, lease, marker, token_key, waiters};
use super::{RedisBackend, failed, malformed, parse_key, px, token};
use crate::backend::{BatchEntry, FillToken, Lease, Leases, Stored, fresh_token};
use crate::error::BackendError;

/// KEYS: version tokens of one slot. ARGV: ms, then a fresh token per key.
/// Returns each token, created (with the fresh one, for `ms`) when absent
/// or not a token, and kept at least `ms` otherwise; as in ACQUIRE.
static TOKENS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local out = {}
        for i = 1, #KEYS do
            local key = KEYS[i]
            local t = redis.call('TYPE', key)['ok']
            if t ~= 'string' and t ~= 'none' then redis.call('DEL', key) end
            local v = redis.call('GET', key)
            if v and #v <= 19 and string.match(v, '^[1-9]%d*$') then
                if redis.call('PTTL', key) < tonumber(ARGV[1]) then
                    redis.call('PEXPIRE', key, ARGV[1])
                end
                out[i] = v
            else
                redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
                out[i] = ARGV[i + 1]
            end
        end
        return out
        ",
    )
});

/// KEYS: version tokens of one slot. ARGV: ms, then the expected token per
/// key. Returns 1 if every token holds its expected value, and then keeps
/// them at least `ms` (the entry about to be written will need them that
/// long); 0 otherwise, touching nothing.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        for i = 1, #KEYS do
            if redis.call('TYPE', KEYS[i])['ok'] ~= 'string' then return 0 end
            if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 0 end
        end
        for i = 1, #KEYS do
            if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) then
                redis.call('PEXPIRE', KEYS[i], ARGV[1])
            end
        end
        return 1
        ",
    )
});

/// KEYS: version tokens of one slot. ARGV: ms. Keeps each token at least
/// `ms`; an absent token stays absent (`PEXPIRE` creates nothing).
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        for i = 1, #KEYS do
            if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) then
                redis.call('PEXPIRE', KEYS[i], ARGV[1])
            end
        end
        return 1
        ",
    )
});

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

impl RedisBackend {
    /// Reads the tokens `versions`, creating the absent ones: one TOKENS
    /// script per slot (all of one namespace share one).
    async fn cluster_tokens(
        &self,
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
            let mut conn = self.conn.clone();
            async move {
                invocation
                    .invoke_async::<Vec<redis::Value>>(&mut conn)
                    .await
            }
        }))
        .await
        .map_err(failed)?;
        let mut tokens = vec![0; versions.len()];
        for (group, reply) in groups.iter().zip(replies) {
            if reply.len() != group.len() {
                return Err(malformed("short token reply"));
            }
            for (&i, v) in group.iter().zip(reply) {
                tokens[i] = token(&v);
            }
        }
        Ok(tokens)
    }

    /// Whether the tokens `versions` still hold `expected` (an absent one,
    /// 0, holds nothing); those that do are kept at least `ttl`, for the
    /// entry about to be written. One CHECK script per slot (all of one
    /// namespace share one). Extending before the write is harmless: an
    /// extension never creates a token, and a refused write only leaves
    /// the tokens living a little longer.
    async fn cluster_tokens_hold(
        &self,
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
            let mut conn = self.conn.clone();
            async move { invocation.invoke_async::<u8>(&mut conn).await }
        }))
        .await
        .map_err(failed)?;
        Ok(held.iter().all(|&h| h == 1))
    }

    /// Keeps the tokens `versions` at least `ttl`, never re-creating one. A
    /// failure only lets a token lapse before its entries (which then miss),
    /// so it is logged, not returned: the write it follows did happen.
    async fn cluster_extend(&self, versions: &[String], ttl: Duration) {
        let groups = by_slot(versions, |v| token_key(v));
        let result = try_join_all(groups.iter().map(|group| {
            let mut invocation = EXTEND.prepare_invoke();
            invocation.arg(px(ttl));
            for &i in group {
                invocation.key(token_key(&versions[i]));
            }
            let mut conn = self.conn.clone();
            async move { invocation.invoke_async::<()>(&mut conn).await }
        }))
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "aside: could not extend version tokens");
        }
    }

    /// `get_for_fill` (leased with a token): tokens, then the key's step.
    pub(super) async fn cluster_acquire(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        lease_token: &str,
        lease_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let tokens = self.cluster_tokens(versions, marker_ttl).await?;
        let reply: Vec<redis::Value> = ACQUIRE
            .key(data(key))
            .key(marker(key))
            .key(lease(key))
            .key(waiters(key))
            .arg(lease_token)
            .arg(px(lease_ttl))
            .arg(px(marker_ttl))
            .arg(fresh_token())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        let mut it = reply.into_iter();
        let (Some(taken), Some(pttl), Some(data), Some(marker)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(malformed("short lease reply"));
        };
        Ok(parse_key(taken, pttl, data, &marker, tokens, lease_token))
    }

    /// `fill`: the tokens compared, the key's FILL, the tokens extended.
    pub(super) async fn cluster_fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        if !self
            .cluster_tokens_hold(versions, token.versions(), ttl)
            .await?
        {
            if let Lease::Held(t) = token.lease() {
                self.release_lease(key, t).await?;
            }
            return Ok(false);
        }
        self.fill_script(key, value, ttl, token, &[]).await
    }

    /// `set`: the key's SET, then the tokens extended.
    pub(super) async fn cluster_set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        // Both at once: an extension never creates a token, so its order
        // with the write does not matter.
        let (written, ()) = tokio::join!(
            self.set_script(key, value, ttl, &[]),
            self.cluster_extend(versions, ttl)
        );
        written
    }

    /// `get_for_fill_many`: the tokens once, then ACQUIRE_MANY per slot.
    pub(super) async fn cluster_acquire_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
        lease_token: &str,
        lease_ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = self.cluster_tokens(versions, marker_ttl).await?;
        let groups = by_slot(keys, |k| data(k));
        let replies = try_join_all(groups.iter().map(|group| {
            let part = pick(keys, group);
            async move {
                self.acquire_many(&part, &[], marker_ttl, lease_token, lease_ttl)
                    .await
            }
        }))
        .await?;
        let mut out: Vec<Option<(Option<Stored>, FillToken)>> = vec![None; keys.len()];
        for (group, reply) in groups.iter().zip(replies) {
            for (&i, (stored, t)) in group.iter().zip(reply) {
                let t =
                    FillToken::new(t.generation(), tokens.clone()).with_lease(t.lease().clone());
                out[i] = Some((stored, t));
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| malformed("short batch lease reply")))
            .collect()
    }

    /// `fill_many`: each distinct set of tokens compared (and extended to the
    /// longest TTL stored under it) once on the namespace's slot, then
    /// FILL_MANY per slot for the fills whose tokens held, checking markers
    /// and leases there.
    pub(super) async fn cluster_fill_many(
        &self,
        fills: &[(BatchEntry, FillToken)],
        versions: &[String],
    ) -> Result<Vec<bool>, BackendError> {
        // Fills of one batch usually share their tokens: one check each.
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
                && self
                    .cluster_tokens_hold(versions, t.versions(), longest)
                    .await?;
            checked.push((t.versions(), held));
        }
        let holds = |t: &FillToken| checked.iter().any(|(v, ok)| *ok && *v == t.versions());
        // Refused here: release their leases (FILL_MANY would have).
        for (e, t) in fills.iter().filter(|(_, t)| !holds(t)) {
            if let Lease::Held(l) = t.lease() {
                self.release_lease(&e.key, l).await?;
            }
        }
        // The rest go to their slots with the token part already checked.
        let sent: Vec<usize> = (0..fills.len())
            .filter(|&i| fills.get(i).is_some_and(|(_, t)| holds(t)))
            .collect();
        let stripped: Vec<(BatchEntry, FillToken)> = sent
            .iter()
            .filter_map(|&i| fills.get(i))
            .map(|(e, t)| {
                let token =
                    FillToken::new(t.generation(), Vec::new()).with_lease(t.lease().clone());
                (e.clone(), token)
            })
            .collect();
        let groups = by_slot(&stripped, |(e, _)| data(&e.key));
        let replies = try_join_all(groups.iter().map(|group| {
            let part = pick(&stripped, group);
            async move { self.fill_many_script(&part, &[]).await }
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

    /// `set_many`: SET_MANY per slot, then the tokens extended.
    pub(super) async fn cluster_set_many(
        &self,
        entries: &[BatchEntry],
        versions: &[String],
    ) -> Result<(), BackendError> {
        let groups = by_slot(entries, |e| data(&e.key));
        let longest = entries.iter().map(|e| e.ttl).max().unwrap_or_default();
        let writes = try_join_all(groups.iter().map(|group| {
            let part = pick(entries, group);
            async move { self.set_many_script(&part, &[]).await }
        }));
        // As in `set`: the extension's order with the writes does not matter.
        let (written, ()) = tokio::join!(writes, self.cluster_extend(versions, longest));
        written.map(|_| ())
    }

    /// `release_leases`: RELEASE_MANY per slot.
    pub(super) async fn cluster_release_many(
        &self,
        keys: &[String],
        token: &str,
    ) -> Result<(), BackendError> {
        let groups = by_slot(keys, |k| data(k));
        try_join_all(groups.iter().map(|group| {
            let part = pick(keys, group);
            async move { self.release_many(&part, token).await }
        }))
        .await?;
        Ok(())
    }

    /// `renew_leases`: RENEW_MANY per slot.
    pub(super) async fn cluster_renew_many(
        &self,
        keys: &[String],
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, BackendError> {
        let groups = by_slot(keys, |k| data(k));
        let replies = try_join_all(groups.iter().map(|group| {
            let part = pick(keys, group);
            async move { self.renew_many(&part, token, ttl).await }
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
