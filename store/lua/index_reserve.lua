-- index_reserve.lua takes a place for a member in a bounded index (a
-- user's running sessions or open terminals), in that index's own slot: it
-- is how a per-user limit stays exact on a Redis Cluster, where the index
-- and the session cannot be written in one script. The member's score is
-- set to the Redis time of the reservation.
--
-- KEYS[1] index (sorted set)
-- ARGV[1] member            ARGV[2] most members (0: no limit)
--
-- Returns {1, 1} when the member was added, {1, 0} when it was there
-- already (its score refreshed), {0, count} when the index is full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {1, 0}
end
local limit = tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if limit > 0 and n >= limit then
  return {0, n}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {1, 1}
