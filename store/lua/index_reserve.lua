-- index_reserve.lua takes a place for a member in a bounded index (a
-- user's running sessions or open terminals), in that index's own slot: it
-- is how a per-user limit stays exact on a Redis Cluster, where the index
-- and the session cannot be written in one script. The member's score is
-- set to the Redis time of the reservation.
--
-- A full index can give a place up: with a victim named (a terminal the
-- caller chose to end, from the state of another slot), the victim's place
-- is taken here in one step, so the limit stays exact. The victim gives it
-- only while its entry still has the score the caller read: an entry
-- written again since (the terminal reopened) stays, and of two callers
-- that chose the same victim only one takes its place.
--
-- KEYS[1] index (sorted set)
-- ARGV[1] member            ARGV[2] most members (0: no limit)
-- ARGV[3] victim (optional) ARGV[4] the victim's score as the caller read it
--
-- Returns {1, 1} when the member was added, {1, 0} when it was there
-- already (its score refreshed), {2, score} when it took the victim's place
-- (the victim removed, the member added at score), {0, count} when the
-- index is full (and the victim, if named, not there as read).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {1, 0}
end
local limit = tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if limit > 0 and n >= limit then
  if not ARGV[3] then
    return {0, n}
  end
  local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
  if not score or tonumber(score) ~= tonumber(ARGV[4]) then
    return {0, n}
  end
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {2, now}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {1, 1}
