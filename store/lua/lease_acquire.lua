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
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
