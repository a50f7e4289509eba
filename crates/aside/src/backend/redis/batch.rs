//! The batch operations of the Redis backend: one command (an `MGET` or one
//! script) per batch, whatever its size, so that a batch of n keys costs one
//! round trip instead of n.
//!
//! The scripts take every key of the batch in `KEYS`: on one Redis, the
//! whole batch with its tokens. On a Redis Cluster, `cluster` calls them
//! once per slot (with no tokens; those have steps of their own there).

use std::time::Duration;

use super::scripts::{
    ACQUIRE_MANY, FILL_MANY, FILLS_CHANNEL, RELEASE_MANY, RENEW_MANY, SET_MANY, data, data_into,
    lease, marker, token_key, waiters,
};
use super::{RedisBackend, failed, malformed, parse_key, parse_token, px, token};
use crate::backend::{BatchEntry, FillToken, Lease, Stored, fresh_token};
use crate::error::BackendError;

impl RedisBackend {
    /// Entries and counters in one `MGET`.
    pub(super) async fn mget_many(
        &self,
        keys: &[String],
        versions: &[String],
    ) -> Result<(Vec<Option<Stored>>, Vec<u64>), BackendError> {
        if keys.is_empty() && versions.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut conn = self.conn.clone();
        // Sized once, and every data key written through one buffer: the
        // command copies each argument anyway.
        let bytes: usize = keys.iter().map(|k| k.len() + 2).sum();
        let mut mget = redis::Cmd::with_capacity(1 + keys.len() + versions.len(), 4 + bytes);
        mget.arg("MGET");
        let mut key_buf = String::new();
        for key in keys {
            data_into(&mut key_buf, key);
            mget.arg(key_buf.as_str());
        }
        for name in versions {
            mget.arg(token_key(name));
        }
        let mut values: Vec<Option<bytes::Bytes>> =
            mget.query_async(&mut conn).await.map_err(failed)?;
        if values.len() != keys.len() + versions.len() {
            return Err(malformed("MGET answered a different number of keys"));
        }
        let tokens = values
            .split_off(keys.len())
            .iter()
            .map(|v| v.as_deref().map_or(0, parse_token))
            .collect();
        Ok((
            values.into_iter().map(|v| v.map(Stored::new)).collect(),
            tokens,
        ))
    }

    /// ACQUIRE_MANY: `get_for_fill` (and the leases, with a token) of every
    /// key in one script.
    pub(super) async fn acquire_many(
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
        let mut invocation = ACQUIRE_MANY.prepare_invoke();
        for key in keys {
            invocation
                .key(data(key))
                .key(marker(key))
                .key(lease(key))
                .key(waiters(key));
        }
        for name in versions {
            invocation.key(token_key(name));
        }
        invocation
            .arg(lease_token)
            .arg(px(lease_ttl))
            .arg(px(marker_ttl))
            .arg(keys.len());
        for _ in keys.iter().map(|_| ()).chain(versions.iter().map(|_| ())) {
            invocation.arg(fresh_token());
        }
        let reply: Vec<redis::Value> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        if reply.len() != versions.len() + 4 * keys.len() {
            return Err(malformed("short batch lease reply"));
        }
        let mut it = reply.into_iter();
        let tokens: Vec<u64> = it
            .by_ref()
            .take(versions.len())
            .map(|v| token(&v))
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        while let (Some(taken), Some(pttl), Some(data), Some(marker)) =
            (it.next(), it.next(), it.next(), it.next())
        {
            out.push(parse_key(
                taken,
                pttl,
                data,
                &marker,
                tokens.clone(),
                lease_token,
            ));
        }
        Ok(out)
    }

    /// FILL_MANY: every conditional fill in one script, each checked
    /// against its own tokens.
    pub(super) async fn fill_many_script(
        &self,
        fills: &[(BatchEntry, FillToken)],
        versions: &[String],
    ) -> Result<Vec<bool>, BackendError> {
        // An absent token validates nothing, nor does a token for other
        // counters: such fills are refused here, the others go in one
        // script.
        let sendable = |t: &FillToken| {
            t.generation() != 0
                && !t.versions().contains(&0)
                && t.versions().len() == versions.len()
        };
        let sent: Vec<&(BatchEntry, FillToken)> =
            fills.iter().filter(|(_, t)| sendable(t)).collect();
        if sent.is_empty() {
            return Ok(vec![false; fills.len()]);
        }
        let mut invocation = FILL_MANY.prepare_invoke();
        invocation.arg(FILLS_CHANNEL).arg(sent.len());
        for (entry, token) in &sent {
            let key = &entry.key;
            invocation
                .key(data(key))
                .key(marker(key))
                .key(lease(key))
                .key(waiters(key));
            let lease_token = match token.lease() {
                Lease::Held(t) => t.as_str(),
                _ => "",
            };
            invocation
                .arg(entry.value.bytes().as_ref())
                .arg(px(entry.ttl))
                .arg(token.generation().to_string())
                .arg(lease_token);
            for version in token.versions() {
                invocation.arg(version.to_string());
            }
        }
        for name in versions {
            invocation.key(token_key(name));
        }
        let stored: Vec<u8> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        let mut stored = stored.into_iter();
        Ok(fills
            .iter()
            .map(|(_, t)| sendable(t) && stored.next() == Some(1))
            .collect())
    }

    /// SET_MANY: every unconditional write in one script.
    pub(super) async fn set_many_script(
        &self,
        entries: &[BatchEntry],
        versions: &[String],
    ) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut invocation = SET_MANY.prepare_invoke();
        for entry in entries {
            invocation
                .key(data(&entry.key))
                .key(marker(&entry.key))
                .arg(entry.value.bytes().as_ref())
                .arg(px(entry.ttl));
        }
        for name in versions {
            invocation.key(token_key(name));
        }
        invocation
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(failed)
    }

    pub(super) async fn release_many(
        &self,
        keys: &[String],
        token: &str,
    ) -> Result<(), BackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut invocation = RELEASE_MANY.prepare_invoke();
        for key in keys {
            invocation.key(data(key)).key(lease(key)).key(waiters(key));
        }
        invocation
            .arg(token)
            .arg(FILLS_CHANNEL)
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(failed)
    }

    pub(super) async fn renew_many(
        &self,
        keys: &[String],
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = RENEW_MANY.prepare_invoke();
        for key in keys {
            invocation.key(lease(key)).key(waiters(key));
        }
        let renewed: Vec<u8> = invocation
            .arg(token)
            .arg(px(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed)?;
        Ok(renewed.into_iter().map(|r| r == 1).collect())
    }
}
