-- permission_settle.lua removes a pending permission request once it is
-- answered, timed out or withdrawn. With a body it also appends that
-- permission_cancelled event, but only if the request was still pending and
-- the run is still current: a request is settled once.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] session permissions hash
-- KEYS[4] permission index (hash: request id -> session id)
-- ARGV[1] runId             ARGV[2] stream MAXLEN
-- ARGV[3] pub/sub channel   ARGV[4] request id
-- ARGV[5] permission_cancelled body, or ""
--
-- Returns 1 if the request was pending, else 0.
local removed = redis.call('HDEL', KEYS[3], ARGV[4])
if removed == 0 then
  return 0
end
local cur = redis.call('HMGET', KEYS[1], 'runId', 'state', 'id')
if redis.call('HGET', KEYS[4], ARGV[4]) == cur[3] then
  redis.call('HDEL', KEYS[4], ARGV[4])
end
if ARGV[5] ~= '' and cur[1] == ARGV[1] and cur[2] == 'running' then
  emit(KEYS[1], KEYS[2], ARGV[3], ARGV[2], ARGV[1], 'permission_cancelled', ARGV[5], '')
end
return 1
