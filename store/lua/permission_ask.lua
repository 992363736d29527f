-- permission_ask.lua records a tool permission request of a run, if the run
-- is still the session's current running run: it appends the
-- permission_request event and stores the request as pending. The caller
-- indexes the request id (request id -> session id) before, so that an
-- answer arriving at any gateway finds the session.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] session permissions hash (request id -> pending JSON)
-- ARGV[1] runId             ARGV[2] stream limits "<events> <bytes>"
-- ARGV[3] pub/sub channel   ARGV[4] request id
-- ARGV[5] event body        ARGV[6] pending request JSON
-- ARGV[7] seq floor (see raise in prelude.lua; 0 for none)
-- ARGV[8] deadline, Unix ms in Redis's clock (0: none): past it nothing
--         is written. The worker has given up on the call by then and
--         denied the tool; a request recorded after would be a prompt no
--         answer reaches (a stalled Redis runs the call late).
--
-- A request already pending is not asked again: a second copy of one call
-- (go-redis writes a call again when its reply is late, and a stalled Redis
-- runs both) must not show the user the question twice.
--
-- Returns the event's seq (the session's last, for a request already
-- pending), or the error "STALE".
local deadline = tonumber(ARGV[8]) or 0
if deadline > 0 and now_ms() > deadline then
  return redis.error_reply('LATE')
end
local cur = redis.call('HMGET', KEYS[1], 'runId', 'state', 'lastSeq')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then
  return redis.error_reply('STALE')
end
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then
  return tonumber(cur[3] or '0')
end
raise(KEYS[1], ARGV[7])
local seq = emit(KEYS[1], KEYS[2], ARGV[3], ARGV[2], ARGV[1], 'permission_request', ARGV[5], '')
redis.call('HSET', KEYS[3], ARGV[4], ARGV[6])
return seq
