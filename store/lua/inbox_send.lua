-- inbox_send.lua appends a control message to a worker's inbox and keeps
-- the inbox for a while after it. The first write is EXPIRE, which cannot
-- grow memory: Redis at its maxmemory refuses only a script's first write,
-- so controls (an abort, a permission answer, a kill; each small, the
-- inbox capped) still reach workers when Redis is full, and an aborted
-- run's CLI stops.
-- A deadline past in Redis's clock writes nothing: the sender stopped
-- waiting and told its user the control failed (a stalled Redis runs what
-- waited in its sockets when it goes on).
--
-- KEYS[1] inbox   ARGV[1] max length (approximate)   ARGV[2] TTL, seconds
-- ARGV[3] message
-- ARGV[4] deadline, Unix ms in Redis's clock (0: none)
--
-- Returns 1, or 0 when past the deadline.
local deadline = tonumber(ARGV[4]) or 0
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then
    return 0
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'msg', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
