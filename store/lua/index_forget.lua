-- index_forget.lua removes a member from an index (sorted set) unless it
-- was written again since the caller decided to remove it: it goes only if
-- its score is at most the given one. An index written outside the atomic
-- step of a session (a Redis Cluster keeps them in other slots) is cleaned
-- this way without dropping a newer run's entry.
--
-- KEYS[1] index (sorted set)
-- ARGV[1] member            ARGV[2] highest score that may go
--
-- Returns 1 when removed, else 0.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
