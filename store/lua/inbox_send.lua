-- inbox_send.lua appends a control message to a worker's inbox and keeps
-- the inbox for a while after it. The first write is EXPIRE, which cannot
-- grow memory: Redis at its maxmemory refuses only a script's first write,
-- so controls (an abort, a permission answer, a kill; each small, the
-- inbox capped) still reach workers when Redis is full, and an aborted
-- run's CLI stops.
--
-- KEYS[1] inbox   ARGV[1] max length (approximate)   ARGV[2] TTL, seconds
-- ARGV[3] message
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'msg', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
