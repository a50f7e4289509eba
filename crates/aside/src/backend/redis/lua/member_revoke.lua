-- MEMBER REVOKE: unregisters an instance so it cannot renew.
-- KEYS: the registry (see MEMBER RENEW). ARGV: instance.
-- Returns when its lease ends (Redis ms), or -1 if it was not registered.
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if not ends then return -1 end
return tonumber(ends)
