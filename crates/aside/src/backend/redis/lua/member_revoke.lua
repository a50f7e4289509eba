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
registry_only(KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local born = redis.call('ZSCORE', KEYS[1], birth_mark())
local tomb = '~rev:' .. ARGV[1]
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
local before = redis.call('ZSCORE', KEYS[1], tomb)
if ends then ends = tonumber(ends) end
if before and (not ends or tonumber(before) > ends) then ends = tonumber(before) end
redis.call('ZREM', KEYS[1], ARGV[1])
if ends and born then redis.call('ZADD', KEYS[1], ends, tomb) end
local lease = tonumber(ARGV[2])
-- A registry lost or replaced since the writer listed it, or younger than
-- a lease: a lease it does not list may still run, at the latest until a
-- lease after its birth (or, without one here, a lease from now).
local settled = now + lease
if born then settled = -tonumber(born) + lease end
if settled > now and (not ends or ends < settled) then ends = settled end
if not ends then return -1 end
return ends
