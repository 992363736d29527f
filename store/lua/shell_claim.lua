-- shell_claim.lua numbers a socket's taking of a terminal (an init without
-- shellId) and tells every gateway following it: a socket keeps the
-- terminal's output until a claim of a higher number is heard. Numbered
-- here, claims have one order on every gateway, whatever each heard when.
--
-- KEYS[1] shell hash
-- ARGV[1] generation   ARGV[2] the terminal's channel
--
-- Returns the claim's number, or 0 when the terminal has no hash (Redis
-- lost it with its data; nothing is published).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 0
end
if state ~= 'exited' then
  -- As in shell_touch.lua: a live terminal's hash has no TTL, and PERSIST
  -- as the first write lets the rest run on a Redis at its maxmemory.
  redis.call('PERSIST', KEYS[1])
end
local n = redis.call('HINCRBY', KEYS[1], 'claims', 1)
redis.call('PUBLISH', ARGV[2], 't ' .. ARGV[1] .. ' ' .. n)
return n
