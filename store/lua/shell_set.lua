-- shell_set.lua sets fields of a terminal generation's hash, if that
-- generation is still current.
--
-- KEYS[1] shell hash
-- ARGV[1] generation   ARGV[2 ..] field, value pairs
--
-- Returns 1 when set, 0 for a stale generation.
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
