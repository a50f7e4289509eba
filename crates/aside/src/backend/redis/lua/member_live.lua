-- MEMBER LIVE: the registered instances of a backplane.
-- KEYS: the registry (see MEMBER RENEW). ARGV: the longest lease ms, keep
-- ms.
-- Returns {now ms, settling ms, instance, lease left ms, instance, ...}: now
-- is Redis's time, settling how long the list must still be waited for,
-- when the registry is younger than one lease (instances registered before
-- it was lost, or renewed on another server before a failover, may still
-- hold leases it does not list).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mark = '~born:' .. string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local born = redis.call('ZSCORE', KEYS[1], mark)
if born then
    born = -tonumber(born)
else
    redis.call('DEL', KEYS[1])
    redis.call('ZADD', KEYS[1], -now, mark)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    born = now
end
local settling = born + tonumber(ARGV[1]) - now
if settling < 0 then settling = 0 end
local out = {now, settling}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
    out[#out + 1] = live[i]
    out[#out + 1] = tonumber(live[i + 1]) - now
end
return out
