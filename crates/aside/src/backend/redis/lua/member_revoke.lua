-- MEMBER REVOKE: unregisters an instance so it cannot renew.
-- KEYS: the registry (see MEMBER RENEW). ARGV: instance.
-- Returns the lease it had left (ms), or -1 if it was not registered.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if not ends then return -1 end
local left = tonumber(ends) - now
if left < 0 then left = 0 end
return left
