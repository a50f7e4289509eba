-- SET: unconditional writes. KEYS: data and marker of each key, then the
-- version counters. ARGV: bytes and ttl ms per key. Removes each marker
-- (loads that began earlier cannot fill), and keeps the counters the
-- entries recorded as long as the longest of them.
local n = #ARGV / 2
local longest = 0
for i = 0, n - 1 do
    redis.call('SET', KEYS[2*i+1], ARGV[2*i+1], 'PX', ARGV[2*i+2])
    redis.call('DEL', KEYS[2*i+2])
    longest = math.max(longest, tonumber(ARGV[2*i+2]))
end
for j = 2 * n + 1, #KEYS do keep(KEYS[j], longest) end
return 1
