-- index_unlink.lua removes a field of an index hash (request id -> session
-- id) only if it still names the given value: a request id settled in one
-- session never drops another session's entry of the same id.
--
-- KEYS[1] index hash
-- ARGV[1] value   ARGV[2 ..] fields
--
-- Returns how many fields were removed.
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
