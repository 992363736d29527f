-- lease_acquire.lua takes a named lease for a holder, or extends it when the
-- holder already has it.
--
-- KEYS[1] lease key
-- ARGV[1] holder            ARGV[2] time to live, ms
--
-- Returns 1 when the holder has the lease, 0 otherwise.
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur then
  return 0
end
-- The key is absent, so DEL changes nothing; as the script's first write
-- it lets the SET run when Redis is at its maxmemory (which refuses only a
-- script's first write): reaping, which frees memory, must not stop when
-- Redis is full.
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
