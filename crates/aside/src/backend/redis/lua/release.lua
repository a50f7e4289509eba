-- RELEASE: give back leases without filling. KEYS: data, lease, waiters of
-- each key. ARGV: token, channel. Only leases holding the token go, and
-- their waiters are told.
for i = 0, #KEYS / 3 - 1 do
    local data, lease, waiters = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
    if redis.call('GET', lease) == ARGV[1] then
        redis.call('DEL', lease)
        if redis.call('DEL', waiters) == 1 then
            redis.call('PUBLISH', ARGV[2], data)
        end
    end
end
return 1
