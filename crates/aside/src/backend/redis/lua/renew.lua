-- RENEW: extend leases a load still holds. KEYS: lease and waiters of each
-- key. ARGV: token, lease ms. Returns 1 (renewed) or 0 per key.
local out = {}
for i = 0, #KEYS / 2 - 1 do
    local lease, waiters = KEYS[2*i+1], KEYS[2*i+2]
    if redis.call('GET', lease) == ARGV[1] then
        redis.call('PEXPIRE', lease, ARGV[2])
        if redis.call('EXISTS', waiters) == 1 then
            redis.call('PEXPIRE', waiters, ARGV[2])
        end
        out[i + 1] = 1
    else
        out[i + 1] = 0
    end
end
return out
