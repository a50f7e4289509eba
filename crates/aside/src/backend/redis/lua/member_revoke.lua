-- MEMBER REVOKE: unregisters an instance so it cannot renew.
-- KEYS: the registry (see MEMBER RENEW). ARGV: instance, the longest lease
-- ms.
-- Returns when its lease ends (Redis ms), or -1 if it was neither
-- registered nor revoked before.
--
-- A revoked instance learns of it only at its next renewal, and serves
-- its copies until then: a tombstone, '~rev:<instance>' scored with its
-- lease end, keeps it listed (MEMBER LIVE lists it under its own name)
-- until that lease is over, so that every later write waits for it too,
-- not only the one that revoked it.
local ty = redis.call('TYPE', KEYS[1])['ok']
if ty ~= 'zset' and ty ~= 'none' then redis.call('DEL', KEYS[1]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local born = redis.call('ZSCORE', KEYS[1],
    '~born:' .. string.match(redis.call('INFO', 'server'), 'run_id:(%x+)'))
local tomb = '~rev:' .. ARGV[1]
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
local before = redis.call('ZSCORE', KEYS[1], tomb)
if ends then ends = tonumber(ends) end
if before and (not ends or tonumber(before) > ends) then ends = tonumber(before) end
redis.call('ZREM', KEYS[1], ARGV[1])
if ends and born then redis.call('ZADD', KEYS[1], ends, tomb) end
local lease = tonumber(ARGV[2])
if not born or -tonumber(born) + lease > now then
    -- The registry was lost or replaced since the writer listed it (or is
    -- younger than a lease): a lease it does not list may still run.
    if not ends or ends < now + lease then ends = now + lease end
end
if not ends then return -1 end
return ends
