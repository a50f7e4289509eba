-- MEMBER LIVE: the registered instances of a backplane.
-- KEYS: the registry (see MEMBER RENEW). ARGV: the longest lease ms, keep
-- ms.
-- Returns {now ms, settling ms, instance, lease left ms, instance, ...}: now
-- is Redis's time, settling how long the list must still be waited for,
-- when the registry is younger than one lease (instances registered before
-- it was lost, or renewed on another server before a failover, may still
-- hold leases it does not list).
registry_only(KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mark = birth_mark()
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
-- Revoked instances ('~rev:<instance>', see MEMBER REVOKE) are listed
-- under their own names until their leases end; an instance listed twice
-- (revoked, then registered again) is listed with the later end.
local ends, order = {}, {}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
    local id = live[i]
    if string.sub(id, 1, 5) == '~rev:' then id = string.sub(id, 6) end
    local e = tonumber(live[i + 1])
    if not ends[id] then order[#order + 1] = id end
    if not ends[id] or e > ends[id] then ends[id] = e end
end
for _, id in ipairs(order) do
    out[#out + 1] = id
    out[#out + 1] = ends[id] - now
end
return out
