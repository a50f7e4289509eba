-- TOKENS (Redis Cluster): read or create version counters of one slot.
-- KEYS: the counters. ARGV: ms, then a fresh token per counter. Returns the
-- tokens.
local out = {}
for i = 1, #KEYS do
    out[i] = token(KEYS[i], ARGV[i + 1], ARGV[1])
end
return out
