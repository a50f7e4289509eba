-- The helpers every script of the Redis backend shares, prepended to each
-- at compile time (see scripts.rs). Unused ones cost nothing.

-- A value of another type under one of our keys (written by something
-- else) is garbage to us: drop it rather than fail on it.
local function clear_foreign(key)
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'string' and t ~= 'none' then redis.call('DEL', key) end
end

-- A string value, or false for none or a value of another type.
local function get(key)
    if redis.call('TYPE', key)['ok'] ~= 'string' then return false end
    return redis.call('GET', key)
end

-- Keeps `key` at least `ms` milliseconds more (never shortens it).
local function keep(key, ms)
    if redis.call('PTTL', key) < tonumber(ms) then
        redis.call('PEXPIRE', key, ms)
    end
end

-- A validity token (a marker or a version counter): read and kept at
-- least `ms`, or created with `fresh` when absent or not a token (foreign
-- bytes are replaced, not trusted). Tokens are decimal, at most 19 digits,
-- never 0.
local function token(key, fresh, ms)
    clear_foreign(key)
    local v = redis.call('GET', key)
    if v and #v <= 19 and string.match(v, '^[1-9]%d*$') then
        keep(key, ms)
        return v
    end
    redis.call('SET', key, fresh, 'PX', ms)
    return fresh
end


-- Strict invalidation's registry (see MEMBER RENEW): the name of its birth
-- mark on this server process, '~born:<run id>'. Needs INFO; without it,
-- an error that says so (rather than a failure deep in a script).
local function birth_mark()
    local info = redis.pcall('INFO', 'server')
    local id = type(info) == 'string' and string.match(info, 'run_id:(%x+)')
    if not id then
        error({err = 'ERR aside: strict invalidation needs INFO server (the run_id) '
            .. 'for its registry of instances; allow +info to this user'})
    end
    return '~born:' .. id
end

-- A value of another type at the registry's key (written by something
-- else) is a lost registry: drop it.
local function registry_only(key)
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'zset' and t ~= 'none' then redis.call('DEL', key) end
end
