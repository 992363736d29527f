-- index_touch.lua sets a member's score in an index (sorted set) to the
-- Redis time of this index's node, or to the given score when there is one.
--
-- KEYS[1] index (sorted set)
-- ARGV[1] member            ARGV[2] score, or "" for now
--
-- Returns the score.
local score = tonumber(ARGV[2])
if not score then
  local t = redis.call('TIME')
  score = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('ZADD', KEYS[1], score, ARGV[1])
return score
