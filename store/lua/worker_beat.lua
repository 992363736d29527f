-- worker_beat.lua writes a worker's heartbeat: its hash and the hash's TTL.
-- It runs when Redis is at its maxmemory too: Redis refuses a script's
-- writes there only until its first one, and the first is PEXPIRE, which
-- cannot grow memory. The hash's fields are rewritten with values of about
-- the same size, so a worker stays alive, and its runs and terminals with
-- it, while Redis refuses what would grow (run output, new sessions).
--
-- KEYS[1] worker hash
-- ARGV[1] TTL in ms   ARGV[2..] field, value, ...
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
