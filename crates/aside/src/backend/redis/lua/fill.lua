-- FILL: conditional writes after loads, for n keys in one step.
-- KEYS: data, marker, lease, waiters of each key, then the m version
-- counters. ARGV: channel, the number of keys n, then per key: bytes, ttl
-- ms, expected marker, lease token ('' for none) and the m counters it
-- expects. Returns 1 (stored) or 0 per key.
--
-- Each fill writes only if its marker and the counters still hold the
-- load's tokens (an absent one never matches: `get` gives false) and, with
-- a lease token, only if the lease is still its own; it releases its lease
-- whatever the outcome, and announces it if anyone waited (another
-- holder's waiters flag is left alone: it is theirs to announce). After a
-- write the marker has served its purpose and goes, and the counters are
-- kept at least as long as the entries that recorded them.
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
    for j = 4 * n + 1, #KEYS do keep(KEYS[j], longest) end
end
return out
