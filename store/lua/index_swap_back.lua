-- index_swap_back.lua undoes an index_reserve.lua whose victim could not be
-- ended (a socket watched it again meanwhile): the member leaves the place
-- unless its entry was written again since the swap, and the victim gets
-- its entry back at the score it had, unless it has one again.
--
-- KEYS[1] index (sorted set)
-- ARGV[1] member            ARGV[2] the member's score set by the swap
-- ARGV[3] victim            ARGV[4] the victim's score before the swap
--
-- Returns 1.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
end
return 1
