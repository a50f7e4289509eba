-- ACQUIRE: before loads, for n keys in one step. The backend runs plain
-- commands instead (steps.rs, `acquire`) and this script only when they
-- found something foreign, which it replaces.
-- KEYS: data, marker, lease, waiters of each key (four per key), then the
-- version counters. ARGV: lease token ('' for none), lease ms, marker ms,
-- the number of keys n, a fresh marker token per key, a fresh token per
-- counter. Returns the counters' tokens, then {taken, lease pttl, data or
-- nil, marker} per key.
--
-- The marker and counters are read, or created with the fresh tokens when
-- absent, in the same atomic step that re-reads the entry and takes the
-- lease. A load that finds the lease taken raises the waiters flag (for as
-- long as the lease) so the holder announces its fill.
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
        elseif redis.call('GET', lease) == ARGV[1] then
            -- Taken by this load's own first step (the plain-command
            -- acquire, which fell back to this script over a foreign key).
            redis.call('PEXPIRE', lease, ARGV[2])
            taken, pttl = 1, 0
        else
            pttl = redis.call('PTTL', lease)
            if pttl < 0 then
                -- A lease without expiry (not ours: ours always have one)
                -- would block the key for ever: give it one.
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
