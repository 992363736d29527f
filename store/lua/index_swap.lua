-- index_swap.lua takes a place in a full bounded index (a user's open
-- terminals) from the member the caller chose to end, in the index's own
-- slot: the caller chose it from the state of another slot (the terminal's
-- hash), and the choice is checked and the place taken here in one step,
-- so the limit stays exact. The victim gives its place only while its entry
-- still has the score the caller read: an entry written again since (the
-- terminal reopened) stays, and of two opens that chose the same victim
-- only one takes its place. A place free again meanwhile is taken without
-- a victim.
--
-- KEYS[1] index (sorted set)
-- ARGV[1] member            ARGV[2] most members
-- ARGV[3] victim            ARGV[4] the victim's score as the caller read it
--
-- Returns {1, 0} when the member was there already (its score refreshed),
-- {1, 1} when it was added below the limit, {2, score} when it took the
-- victim's place (the victim removed, the member added at score), {0,
-- count} when the index is full and the victim not there as read.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {1, 0}
end
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {1, 1}
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score or tonumber(score) ~= tonumber(ARGV[4]) then
  return {0, n}
end
redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {2, now}
