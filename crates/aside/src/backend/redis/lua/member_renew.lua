-- MEMBER RENEW: registers or renews an instance of a backplane.
-- KEYS: the registry, a sorted set: instance -> lease end (Redis ms),
-- '~rev:<instance>' -> a revoked instance's lease end (see MEMBER REVOKE),
-- and '~born:<run id>' -> minus the registry's birth (Redis ms). One key, so
-- that an eviction or a lost write takes the registry and its birth
-- together. The birth names the server process that keeps the registry:
-- a registry another process wrote (a replica promoted after it lagged, a
-- restart that reloaded a snapshot or an append-only file) may miss
-- renewals that instances count on, so it is treated as new.
-- ARGV: instance, lease ms, register (1/0), keep ms (how long the registry
-- outlives its last renewal).
-- Returns Redis's time (ms), or 0 for a renewal of an instance no longer
-- registered (it was revoked, or the registry was lost and is new).
registry_only(KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local born = birth_mark()
if not redis.call('ZSCORE', KEYS[1], born) then
    -- A registry without its birth here is new: writers wait one lease
    -- before they trust it (see MEMBER LIVE).
    redis.call('DEL', KEYS[1])
    redis.call('ZADD', KEYS[1], -now, born)
end
-- Leases (and revoked leases) are positive scores, the birth a negative
-- one. A value of another type at the key is a lost registry.
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[3] ~= '1' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return 0
end
if ARGV[3] == '1' then
    -- A revoked instance registers again only once it stopped serving
    -- what it held (see MEMBER REVOKE): its tombstone has done its work.
    redis.call('ZREM', KEYS[1], '~rev:' .. ARGV[1])
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return now
