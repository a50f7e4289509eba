//! How the Redis backend runs its atomic steps ([`Steps`]), chosen once when
//! the backend is built: on one Redis ([`OneNode`]) every script gets the
//! entries' keys and their version tokens together, one script per request
//! whatever its size; on a Redis Cluster (`cluster`) one script per slot,
//! with the tokens in steps of their own.

use super::conn::RedisConnection;
use super::scripts::{
    FILL, FILLS_CHANNEL, RELEASE, RENEW, SET, data, data_into, lease, marker, token_key, waiters,
};
use super::wait::{ReplicaWait, acknowledged, del_and_wait};
use super::{failed, px};
use crate::backend::{
    AcquireRequest, Acquired, Entry, FillRequest, FillToken, LeaseAsk, SetRequest,
};
use crate::error::BackendError;

/// The steps whose shape depends on where keys live.
#[async_trait::async_trait]
pub(super) trait Steps: Send + Sync + std::fmt::Debug {
    async fn acquire(
        &self,
        conn: &RedisConnection,
        request: &AcquireRequest<'_>,
    ) -> Result<Vec<Acquired>, BackendError>;

    async fn fill(
        &self,
        conn: &RedisConnection,
        request: &FillRequest<'_>,
    ) -> Result<Vec<bool>, BackendError>;

    async fn set(
        &self,
        conn: &RedisConnection,
        request: &SetRequest<'_>,
    ) -> Result<(), BackendError>;

    async fn renew(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        lease: LeaseAsk<'_>,
    ) -> Result<Vec<bool>, BackendError>;

    async fn release(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        token: &str,
    ) -> Result<(), BackendError>;

    /// The entries of `keys` then the tokens `versions`, in that order
    /// (absent: `None`).
    async fn read(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        versions: &[String],
    ) -> Result<Vec<Option<bytes::Bytes>>, BackendError>;

    /// `DEL` of `keys` (storage keys), then with `wait` a `WAIT` for
    /// replicas (see `wait`).
    async fn delete(
        &self,
        conn: &RedisConnection,
        keys: Vec<String>,
        wait: Option<ReplicaWait>,
    ) -> Result<(), BackendError>;
}

/// One Redis: each request is one script with every key it touches.
#[derive(Debug)]
pub(super) struct OneNode;

#[async_trait::async_trait]
impl Steps for OneNode {
    async fn acquire(
        &self,
        conn: &RedisConnection,
        r: &AcquireRequest<'_>,
    ) -> Result<Vec<Acquired>, BackendError> {
        super::acquire::acquire(conn, r.keys, r.versions, r.marker_ttl, r.lease).await
    }

    async fn fill(
        &self,
        conn: &RedisConnection,
        r: &FillRequest<'_>,
    ) -> Result<Vec<bool>, BackendError> {
        fill(conn, r.fills, r.versions).await
    }

    async fn set(&self, conn: &RedisConnection, r: &SetRequest<'_>) -> Result<(), BackendError> {
        set(conn, r.entries, r.versions).await
    }

    async fn renew(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        lease: LeaseAsk<'_>,
    ) -> Result<Vec<bool>, BackendError> {
        renew(conn, keys, lease).await
    }

    async fn release(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        token: &str,
    ) -> Result<(), BackendError> {
        release(conn, keys, token).await
    }

    /// One `MGET`.
    async fn read(
        &self,
        conn: &RedisConnection,
        keys: &[String],
        versions: &[String],
    ) -> Result<Vec<Option<bytes::Bytes>>, BackendError> {
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
        mget.query_async(&mut conn.clone()).await.map_err(failed)
    }

    /// One `DEL`, or one pipeline of `DEL` and `WAIT`.
    async fn delete(
        &self,
        conn: &RedisConnection,
        keys: Vec<String>,
        wait: Option<ReplicaWait>,
    ) -> Result<(), BackendError> {
        let Some(wait) = wait else {
            return redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut conn.clone())
                .await
                .map_err(failed);
        };
        let replies: Vec<redis::Value> = del_and_wait(&keys, wait)
            .query_async(&mut conn.clone())
            .await
            .map_err(failed)?;
        acknowledged(&replies, wait)
    }
}

/// FILL for `fills` (see `lua/fill.lua`).
pub(super) async fn fill(
    conn: &RedisConnection,
    fills: &[(Entry, FillToken)],
    versions: &[String],
) -> Result<Vec<bool>, BackendError> {
    // An absent token validates nothing, nor does a token for other
    // counters: such fills are refused here, the others go in one script.
    let sendable = |t: &FillToken| t.is_complete() && t.versions().len() == versions.len();
    let sent: Vec<&(Entry, FillToken)> = fills.iter().filter(|(_, t)| sendable(t)).collect();
    if sent.is_empty() {
        return Ok(vec![false; fills.len()]);
    }
    let mut invocation = FILL.prepare_invoke();
    invocation.arg(FILLS_CHANNEL).arg(sent.len());
    for (entry, token) in &sent {
        let key = &entry.key;
        invocation
            .key(data(key))
            .key(marker(key))
            .key(lease(key))
            .key(waiters(key));
        invocation
            .arg(entry.value.bytes().as_ref())
            .arg(px(entry.ttl))
            .arg(token.marker().to_string())
            .arg(token.held_lease().unwrap_or(""));
        for version in token.versions() {
            invocation.arg(version.to_string());
        }
    }
    for name in versions {
        invocation.key(token_key(name));
    }
    let stored: Vec<u8> = invocation
        .invoke_async(&mut conn.clone())
        .await
        .map_err(failed)?;
    let mut stored = stored.into_iter();
    Ok(fills
        .iter()
        .map(|(_, t)| sendable(t) && stored.next() == Some(1))
        .collect())
}

/// SET for `entries` (see `lua/set.lua`).
pub(super) async fn set(
    conn: &RedisConnection,
    entries: &[Entry],
    versions: &[String],
) -> Result<(), BackendError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut invocation = SET.prepare_invoke();
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
        .invoke_async::<()>(&mut conn.clone())
        .await
        .map_err(failed)
}

/// RELEASE for `keys` (see `lua/release.lua`).
pub(super) async fn release(
    conn: &RedisConnection,
    keys: &[String],
    token: &str,
) -> Result<(), BackendError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut invocation = RELEASE.prepare_invoke();
    for key in keys {
        invocation.key(data(key)).key(lease(key)).key(waiters(key));
    }
    invocation
        .arg(token)
        .arg(FILLS_CHANNEL)
        .invoke_async::<()>(&mut conn.clone())
        .await
        .map_err(failed)
}

/// RENEW for `keys` (see `lua/renew.lua`).
pub(super) async fn renew(
    conn: &RedisConnection,
    keys: &[String],
    ask: LeaseAsk<'_>,
) -> Result<Vec<bool>, BackendError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = RENEW.prepare_invoke();
    for key in keys {
        invocation.key(lease(key)).key(waiters(key));
    }
    let renewed: Vec<u8> = invocation
        .arg(ask.token)
        .arg(px(ask.ttl))
        .invoke_async(&mut conn.clone())
        .await
        .map_err(failed)?;
    Ok(renewed.into_iter().map(|r| r == 1).collect())
}
