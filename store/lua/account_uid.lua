-- account_uid.lua maps a user to the uid of their OS account on worker
-- hosts: the uid recorded for the user, else the next one of the range,
-- recorded. Every worker host therefore gives a user the same uid.
--
-- KEYS[1] user -> uid hash   KEYS[2] how many uids were handed out
-- ARGV[1] user   ARGV[2] first uid of the range   ARGV[3] last uid
--
-- Returns the uid, or -1 when the range is used up.
local uid = redis.call('HGET', KEYS[1], ARGV[1])
if uid then
  return tonumber(uid)
end
local n = redis.call('INCR', KEYS[2])
local next = tonumber(ARGV[2]) + n - 1
if next > tonumber(ARGV[3]) then
  redis.call('DECR', KEYS[2])
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], next)
return next
