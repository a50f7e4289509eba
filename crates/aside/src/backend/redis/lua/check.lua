-- CHECK (Redis Cluster): whether counters of one slot still hold the
-- tokens a load read, and if so keep them at least ms. KEYS: the counters.
-- ARGV: ms, then the expected token per counter. Returns 1 or 0.
for i = 1, #KEYS do
    if get(KEYS[i]) ~= ARGV[i + 1] then return 0 end
end
for i = 1, #KEYS do keep(KEYS[i], ARGV[1]) end
return 1
