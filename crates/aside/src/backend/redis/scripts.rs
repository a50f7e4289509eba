//! The Lua scripts of the Redis backend. Each runs atomically on the server,
//! which is what makes "write only if nothing changed since the load began"
//! and "release only your own lease" single steps.
//!
//! The layout is the Redis backend's own (the cache hands it `ns:key` and
//! token names `ns:n`, `ns:t:<tag>`). Keys of one entry share its hash tag:
//! data `{ns:key}`, marker `{ns:key}:g`, lease `{ns:key}:l`, waiters flag
//! `{ns:key}:w` (one Redis Cluster slot). Version tokens (`{ns}:n`,
//! `{ns}:t:<tag>`) carry the namespace's tag. A data key always ends in `}`
//! and the others never do, and a token's tag (`{ns}`, no `:` inside) is
//! never a data key's (`{ns:...}`), so the kinds cannot collide.
//!
//! On one Redis every script gets the entry's keys and its tokens together.
//! On a Redis Cluster they are called with the keys of one slot only (no
//! tokens: see `cluster` for the steps that read, compare and extend them).
//!
//! Markers and counters hold random tokens (decimal, at most 19 digits,
//! never 0) created by ACQUIRE when absent. Invalidations *delete* them
//! (`DEL`, no script needed), nothing increments them: a token that vanished
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

/// KEYS: data, marker, lease, waiters, version counters...
/// ARGV: lease token ('' for none), lease ms, marker ms, a fresh token for
/// the marker, a fresh token for each counter (ARGV[i] for KEYS[i], i >= 5).
/// Returns {taken (1/0), lease pttl, data or nil, marker, counters...}.
///
/// The marker and counters are read, or created with the fresh tokens when
/// absent (or not a token: foreign bytes are replaced, not trusted), in the
/// same atomic step that re-reads the entry and takes the lease. A load that
/// finds the lease taken raises the waiters flag (for as long as the lease)
/// so the holder announces its fill.
pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- A value of another type under one of our keys (written by
        -- something else) is garbage to us: drop it rather than fail on it.
        local function clear_foreign(key)
            local t = redis.call('TYPE', key)['ok']
            if t ~= 'string' and t ~= 'none' then redis.call('DEL', key) end
        end
        local function token(key, fresh, ms)
            clear_foreign(key)
            local v = redis.call('GET', key)
            if v and #v <= 19 and string.match(v, '^[1-9]%d*$') then
                if redis.call('PTTL', key) < tonumber(ms) then
                    redis.call('PEXPIRE', key, ms)
                end
                return v
            end
            redis.call('SET', key, fresh, 'PX', ms)
            return fresh
        end
        local out = {0, -3}
        if ARGV[1] ~= '' then
            clear_foreign(KEYS[3])
            if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
                out[1] = 1
                out[2] = 0
            else
                local pttl = redis.call('PTTL', KEYS[3])
                if pttl < 0 then
                    -- A lease without expiry (not ours: ours always have
                    -- one) would block the key for ever: give it one.
                    redis.call('PEXPIRE', KEYS[3], ARGV[2])
                    pttl = tonumber(ARGV[2])
                end
                out[2] = pttl
                redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
            end
        end
        clear_foreign(KEYS[1])
        out[3] = redis.call('GET', KEYS[1])
        out[4] = token(KEYS[2], ARGV[4], ARGV[3])
        for i = 5, #KEYS do
            out[#out + 1] = token(KEYS[i], ARGV[i], ARGV[3])
        end
        return out
        ",
    )
});

/// KEYS: data, marker, lease, waiters, version counters...
/// ARGV: bytes, ttl ms, expected marker, lease token ('' for none),
/// channel, expected counters...
///
/// Writes only if the marker and the counters still hold the load's tokens
/// (an absent one never matches: `GET` gives `false`) and, with a lease
/// token, only if the lease is still ours; releases our lease whatever the
/// outcome, and announces it if anyone waited. Another holder's waiters flag
/// is left alone (it is theirs to announce). After a write the marker has
/// served its purpose and goes, and the counters are kept at least as long
/// as the entry that recorded them.
pub(super) static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local function get(key)
            if redis.call('TYPE', key)['ok'] ~= 'string' then return false end
            return redis.call('GET', key)
        end
        local leased = ARGV[4] ~= ''
        local ok = (not leased) or get(KEYS[3]) == ARGV[4]
        if leased and ok then
            redis.call('DEL', KEYS[3])
            if redis.call('DEL', KEYS[4]) == 1 then
                redis.call('PUBLISH', ARGV[5], KEYS[1])
            end
        end
        if ok and get(KEYS[2]) ~= ARGV[3] then ok = false end
        for i = 5, #KEYS do
            if ok and get(KEYS[i]) ~= ARGV[i + 1] then ok = false end
        end
        if not ok then return 0 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        redis.call('DEL', KEYS[2])
        for i = 5, #KEYS do
            if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) then
                redis.call('PEXPIRE', KEYS[i], ARGV[2])
            end
        end
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

/// KEYS: data, marker, version counters... ARGV: bytes, ttl ms.
/// Writes unconditionally, removes the marker (loads that began earlier
/// cannot fill), and keeps the counters the entry recorded as long as it.
pub(super) static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        redis.call('DEL', KEYS[2])
        for i = 3, #KEYS do
            if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) then
                redis.call('PEXPIRE', KEYS[i], ARGV[2])
            end
        end
        return 1
        ",
    )
});

/// ACQUIRE for many keys in one step. KEYS: data, marker, lease, waiters of
/// each key (four per key), then the version counters. ARGV: lease token
/// ('' for none), lease ms, marker ms, the number of keys n, a fresh marker
/// token per key, a fresh token per counter. Returns the counters' tokens,
/// then {taken, lease pttl, data or nil, marker} per key.
pub(super) static ACQUIRE_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local function clear_foreign(key)
            local t = redis.call('TYPE', key)['ok']
            if t ~= 'string' and t ~= 'none' then redis.call('DEL', key) end
        end
        local function token(key, fresh, ms)
            clear_foreign(key)
            local v = redis.call('GET', key)
            if v and #v <= 19 and string.match(v, '^[1-9]%d*$') then
                if redis.call('PTTL', key) < tonumber(ms) then
                    redis.call('PEXPIRE', key, ms)
                end
                return v
            end
            redis.call('SET', key, fresh, 'PX', ms)
            return fresh
        end
        local n = tonumber(ARGV[4])
        local out = {}
        for j = 1, #KEYS - 4 * n do
            out[j] = token(KEYS[4 * n + j], ARGV[4 + n + j], ARGV[3])
        end
        for i = 0, n - 1 do
            local data, marker, lease, waiters = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
            local taken, pttl = 0, -3
            if ARGV[1] ~= '' then
                clear_foreign(lease)
                if redis.call('SET', lease, ARGV[1], 'NX', 'PX', ARGV[2]) then
                    taken, pttl = 1, 0
                else
                    pttl = redis.call('PTTL', lease)
                    if pttl < 0 then
                        redis.call('PEXPIRE', lease, ARGV[2])
                        pttl = tonumber(ARGV[2])
                    end
                    redis.call('SET', waiters, '1', 'PX', ARGV[2])
                end
            end
            clear_foreign(data)
            out[#out + 1] = taken
            out[#out + 1] = pttl
            out[#out + 1] = redis.call('GET', data)
            out[#out + 1] = token(marker, ARGV[5 + i], ARGV[3])
        end
        return out
        ",
    )
});

/// FILL for many keys in one step. KEYS: data, marker, lease, waiters of
/// each key, then the m version counters. ARGV: channel, the number of keys
/// n, then per key: bytes, ttl ms, expected marker, lease token ('' for
/// none) and the m counters it expects. Returns 1 (stored) or 0 per key.
///
/// Each fill is checked against its own expected counters, as FILL checks
/// one: a fill whose tokens are stale is refused and writes nothing, one
/// whose tokens are current is stored, whatever the others expect.
pub(super) static FILL_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local function get(key)
            if redis.call('TYPE', key)['ok'] ~= 'string' then return false end
            return redis.call('GET', key)
        end
        local n = tonumber(ARGV[2])
        local m = #KEYS - 4 * n
        local current = {}
        for j = 1, m do current[j] = get(KEYS[4 * n + j]) end
        local out = {}
        local longest = 0
        for i = 0, n - 1 do
            local data, marker, lease, waiters = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
            local a = 2 + (4 + m) * i
            local leased = ARGV[a + 4] ~= ''
            local ok = (not leased) or get(lease) == ARGV[a + 4]
            if leased and ok then
                redis.call('DEL', lease)
                if redis.call('DEL', waiters) == 1 then
                    redis.call('PUBLISH', ARGV[1], data)
                end
            end
            if ok and get(marker) ~= ARGV[a + 3] then ok = false end
            for j = 1, m do
                if ok and current[j] ~= ARGV[a + 4 + j] then ok = false end
            end
            if ok then
                redis.call('SET', data, ARGV[a + 1], 'PX', ARGV[a + 2])
                redis.call('DEL', marker)
                longest = math.max(longest, tonumber(ARGV[a + 2]))
                out[i + 1] = 1
            else
                out[i + 1] = 0
            end
        end
        if longest > 0 then
            for j = 4 * n + 1, #KEYS do
                if redis.call('PTTL', KEYS[j]) < longest then
                    redis.call('PEXPIRE', KEYS[j], longest)
                end
            end
        end
        return out
        ",
    )
});

/// SET for many keys in one step. KEYS: data and marker of each key, then
/// the version counters. ARGV: bytes and ttl ms per key.
pub(super) static SET_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local n = #ARGV / 2
        local longest = 0
        for i = 0, n - 1 do
            redis.call('SET', KEYS[2*i+1], ARGV[2*i+1], 'PX', ARGV[2*i+2])
            redis.call('DEL', KEYS[2*i+2])
            longest = math.max(longest, tonumber(ARGV[2*i+2]))
        end
        for j = 2 * n + 1, #KEYS do
            if redis.call('PTTL', KEYS[j]) < longest then
                redis.call('PEXPIRE', KEYS[j], longest)
            end
        end
        return 1
        ",
    )
});

/// RELEASE for many keys. KEYS: data, lease, waiters of each key. ARGV:
/// token, channel.
pub(super) static RELEASE_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        for i = 0, #KEYS / 3 - 1 do
            local data, lease, waiters = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
            if redis.call('GET', lease) == ARGV[1] then
                redis.call('DEL', lease)
                if redis.call('DEL', waiters) == 1 then
                    redis.call('PUBLISH', ARGV[2], data)
                end
            end
        end
        return 1
        ",
    )
});

/// RENEW for many keys. KEYS: lease and waiters of each key. ARGV: token,
/// lease ms. Returns 1 (renewed) or 0 per key.
pub(super) static RENEW_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local out = {}
        for i = 0, #KEYS / 2 - 1 do
            local lease, waiters = KEYS[2*i+1], KEYS[2*i+2]
            if redis.call('GET', lease) == ARGV[1] then
                redis.call('PEXPIRE', lease, ARGV[2])
                if redis.call('EXISTS', waiters) == 1 then
                    redis.call('PEXPIRE', waiters, ARGV[2])
                end
                out[i + 1] = 1
            else
                out[i + 1] = 0
            end
        end
        return out
        ",
    )
});

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
