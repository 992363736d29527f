-- worker_register.lua puts a worker in the registry, scored by its last
-- heartbeat. PERSIST is a write that changes nothing (the registry has no
-- TTL): as the first write of the script it lets the ZADD, which rescores a
-- member that is already there, run when Redis is at its maxmemory.
--
-- KEYS[1] registry   ARGV[1] score (ms)   ARGV[2] worker id
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
