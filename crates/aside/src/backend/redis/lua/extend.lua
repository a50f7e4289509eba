-- EXTEND (Redis Cluster): keep counters of one slot at least ms, without
-- creating any. KEYS: the counters. ARGV: ms.
for i = 1, #KEYS do keep(KEYS[i], ARGV[1]) end
return 1
