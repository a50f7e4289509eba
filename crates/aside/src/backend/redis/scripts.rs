//! The Lua scripts of the Redis backend (the files in `lua/`) and the key
//! layout they work on. Each script runs atomically on the server, which is
//! what makes "write only if nothing changed since the load began" and
//! "release only your own lease" single steps. Every script takes any
//! number of keys: one key is a batch of one.
//!
//! The layout is the Redis backend's own (the cache hands it `ns:key` and
//! token names `ns:n`, `ns:t:<tag>`). Keys of one entry share its hash tag:
//! data `{ns:key}`, marker `{ns:key}:g`, lease `{ns:key}:l`, waiters flag
//! `{ns:key}:w` (one Redis Cluster slot). Version tokens (`{ns}:n`,
//! `{ns}:t:<tag>`) carry the namespace's tag. A data key always ends in `}`
//! and the others never do, and a token's tag (`{ns}`, no `:` inside) is
//! never a data key's (`{ns:...}`), so the kinds cannot collide.
//!
//! On one Redis every script gets the entries' keys and their tokens
//! together. On a Redis Cluster they are called with the keys of one slot
//! only (no tokens: see `cluster` for the steps that read, compare and
//! extend them).
//!
//! Markers and counters hold random tokens (decimal, at most 19 digits,
//! never 0) created by the lease request (`acquire.rs`: `SET NX GET`)
//! when absent. Invalidations *delete* them (`DEL`, no script needed),
//! nothing increments them: a token that vanished
//! for any reason (invalidation, TTL, eviction, `FLUSHDB`) can only fail a
//! fill or miss an entry, never validate an old one.

use std::sync::LazyLock;

use redis::Script;

/// The channel fills and lease releases are announced on (payload: the data
/// key). Only published when a load waited for the lease (the waiters flag),
/// so uncontended fills cost nothing extra.
pub(super) const FILLS_CHANNEL: &str = "aside:fills";

/// The Redis key of the entry `key`: the whole key is the hash tag.
pub(super) fn data(key: &str) -> String {
    suffixed(key, "")
}

/// The key's marker: ends in `:g`, never `}`, so it can never equal
/// a data key.
pub(super) fn marker(key: &str) -> String {
    suffixed(key, ":g")
}

pub(super) fn lease(key: &str) -> String {
    suffixed(key, ":l")
}

pub(super) fn waiters(key: &str) -> String {
    suffixed(key, ":w")
}

/// Replaces `buf` with `data(key)`, reusing its allocation.
pub(super) fn data_into(buf: &mut String, key: &str) {
    buf.clear();
    buf.push('{');
    buf.push_str(key);
    buf.push('}');
}

/// `{key}` followed by `suffix`.
fn suffixed(key: &str, suffix: &str) -> String {
    let mut m = String::with_capacity(key.len() + suffix.len() + 2);
    m.push('{');
    m.push_str(key);
    m.push('}');
    m.push_str(suffix);
    m
}

/// The Redis key of the version token `name` (`ns:n` or `ns:t:<tag>`):
/// `{ns}:n`, `{ns}:t:<tag>`, in the namespace's slot. A name without `:`
/// (not one the cache makes) is wrapped whole.
pub(super) fn token_key(name: &str) -> String {
    match name.split_once(':') {
        Some((ns, rest)) => {
            let mut k = String::with_capacity(name.len() + 2);
            k.push('{');
            k.push_str(ns);
            k.push_str("}:");
            k.push_str(rest);
            k
        }
        None => suffixed(name, ""),
    }
}

/// A script of `lua/`, with the shared helpers of `lua/prelude.lua` in
/// front (assembled at compile time: the prelude is written once).
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

/// Before loads: entries, markers and counters read (or created), leases
/// taken. See `lua/acquire.lua` for its keys and arguments.
pub(super) static ACQUIRE: LazyLock<Script> = script!("acquire.lua");

/// Conditional writes after loads. See `lua/fill.lua`.
pub(super) static FILL: LazyLock<Script> = script!("fill.lua");

/// Unconditional writes. See `lua/set.lua`.
pub(super) static SET: LazyLock<Script> = script!("set.lua");

/// Leases given back without a fill. See `lua/release.lua`.
pub(super) static RELEASE: LazyLock<Script> = script!("release.lua");

/// Leases extended while their loads run. See `lua/renew.lua`.
pub(super) static RENEW: LazyLock<Script> = script!("renew.lua");

/// A backplane's registry of instances: a registration or a renewal. See
/// `lua/member_renew.lua`.
pub(super) static MEMBER_RENEW: LazyLock<Script> = script!("member_renew.lua");

/// A backplane's registry of instances: the live ones. See
/// `lua/member_live.lua`.
pub(super) static MEMBER_LIVE: LazyLock<Script> = script!("member_live.lua");

/// A backplane's registry of instances: one revoked. See
/// `lua/member_revoke.lua`.
pub(super) static MEMBER_REVOKE: LazyLock<Script> = script!("member_revoke.lua");

/// Redis Cluster: version counters of one slot read or created. See
/// `lua/tokens.lua`.
#[cfg(feature = "cluster")]
pub(super) static TOKENS: LazyLock<Script> = script!("tokens.lua");

/// Redis Cluster: whether counters of one slot still hold a load's tokens
/// (kept longer if so). See `lua/check.lua`.
#[cfg(feature = "cluster")]
pub(super) static CHECK: LazyLock<Script> = script!("check.lua");

/// Redis Cluster: counters of one slot kept longer. See `lua/extend.lua`.
#[cfg(feature = "cluster")]
pub(super) static EXTEND: LazyLock<Script> = script!("extend.lua");

#[cfg(test)]
mod tests {
    use super::{data, data_into};

    #[test]
    fn data_into_writes_what_data_returns() {
        let mut buf = String::from("left over from a longer key");
        for key in ["shop:item:1", "", "ns:{odd}:k", "shop:x"] {
            data_into(&mut buf, key);
            assert_eq!(buf, data(key));
        }
    }
}
