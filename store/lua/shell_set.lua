-- shell_set.lua sets fields of a terminal generation's hash, if that
-- generation is still current and was not ended: a worker that stalled
-- past its heartbeat must not mark running again a terminal that a
-- gateway ended as lost.
--
-- KEYS[1] shell hash
-- ARGV[1] generation   ARGV[2 ..] field, value pairs
--
-- Returns 1 when set, 0 for a stale or ended generation.
local cur = redis.call('HMGET', KEYS[1], 'gen', 'state')
if cur[1] ~= ARGV[1] or cur[2] == 'exited' then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
