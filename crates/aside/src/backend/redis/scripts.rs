//! The Lua scripts of the Redis backend. Each runs atomically on the server,
//! which is what makes "write only if nothing changed since the load began"
//! and "release only your own lease" single steps.
//!
//! Keys of one entry share its hash tag: data `{ns:key}`, generation marker
//! `{ns:key}:g`, lease `{ns:key}:l`, waiters flag `{ns:key}:w` (one Redis
//! Cluster slot). Version counters (`{ns}:n`, `{ns}:t:<tag>`) are the
//! namespace's.

use std::sync::LazyLock;

use redis::Script;

/// The channel fills and lease releases are announced on (payload: the data
/// key). Only published when a load waited for the lease (the waiters flag),
/// so uncontended fills cost nothing extra.
pub(super) const FILLS_CHANNEL: &str = "aside:fills";

/// The key's generation marker: ends in `:g`, never `}`, so it can never equal
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

fn suffixed(key: &str, suffix: &str) -> String {
    let mut m = String::with_capacity(key.len() + suffix.len());
    m.push_str(key);
    m.push_str(suffix);
    m
}

/// KEYS: data, marker, lease, waiters, version counters...
/// ARGV: token, lease ms.
/// Returns {taken (1/0), lease pttl, data or nil, generation, versions...}.
/// A load that finds the lease taken raises the waiters flag (for as long as
/// the lease) so the holder announces its fill.
pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local taken = redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
        local out = {}
        if taken then
            out[1] = 1
            out[2] = 0
        else
            out[1] = 0
            out[2] = redis.call('PTTL', KEYS[3])
            redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
        end
        out[3] = redis.call('GET', KEYS[1])
        out[4] = redis.call('GET', KEYS[2]) or '0'
        for i = 5, #KEYS do
            out[#out + 1] = redis.call('GET', KEYS[i]) or '0'
        end
        return out
        ",
    )
});

/// KEYS: data, marker, lease, waiters, version counters...
/// ARGV: bytes, ttl ms, expected generation, lease token ('' for none),
/// channel, expected versions...
///
/// Writes only if the generation and the versions are unchanged and, with a
/// token, only if the lease is still ours; releases our lease whatever the
/// outcome, and announces it if anyone waited. Another holder's waiters flag
/// is left alone (it is theirs to announce).
pub(super) static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local leased = ARGV[4] ~= ''
        local ok = (not leased) or redis.call('GET', KEYS[3]) == ARGV[4]
        if leased and ok then
            redis.call('DEL', KEYS[3])
            if redis.call('DEL', KEYS[4]) == 1 then
                redis.call('PUBLISH', ARGV[5], KEYS[1])
            end
        end
        if ok and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then ok = false end
        for i = 5, #KEYS do
            if ok and (redis.call('GET', KEYS[i]) or '0') ~= ARGV[i + 1] then ok = false end
        end
        if not ok then return 0 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 1
        ",
    )
});

/// KEYS: data, lease, waiters. ARGV: token, channel.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[2])
        if redis.call('DEL', KEYS[3]) == 1 then
            redis.call('PUBLISH', ARGV[2], KEYS[1])
        end
        return 1
        ",
    )
});

/// KEYS: lease, waiters. ARGV: token, lease ms.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        if redis.call('EXISTS', KEYS[2]) == 1 then
            redis.call('PEXPIRE', KEYS[2], ARGV[2])
        end
        return 1
        ",
    )
});

/// KEYS: version counters. ARGV: ttl ms (kept at least this long).
pub(super) static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        for i = 1, #KEYS do
            redis.call('INCR', KEYS[i])
            if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) then
                redis.call('PEXPIRE', KEYS[i], ARGV[1])
            end
        end
        return #KEYS
        ",
    )
});

/// KEYS: data, marker. ARGV: bytes, ttl ms, marker ttl ms.
pub(super) static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        redis.call('INCR', KEYS[2])
        redis.call('PEXPIRE', KEYS[2], ARGV[3])
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 1
        ",
    )
});

/// KEYS: data1, marker1, data2, marker2, ... ARGV: marker ttl ms.
pub(super) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        for i = 1, #KEYS, 2 do
            redis.call('DEL', KEYS[i])
            redis.call('INCR', KEYS[i + 1])
            redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
        end
        return #KEYS / 2
        ",
    )
});
