-- permission_settle.lua removes a pending permission request once it is
-- answered, timed out or withdrawn. With a body it also appends that
-- permission_cancelled event, but only if the request was still pending and
-- the run is still current: a request is settled once. The caller removes
-- the request from the index after it.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] session permissions hash
-- ARGV[1] runId             ARGV[2] stream limits "<events> <bytes>"
-- ARGV[3] pub/sub channel   ARGV[4] request id
-- ARGV[5] permission_cancelled body, or ""
-- ARGV[6] seq floor (see raise in prelude.lua; 0 for none)
--
-- Returns 1 if the request was pending, else 0.
local removed = redis.call('HDEL', KEYS[3], ARGV[4])
if removed == 0 then
  return 0
end
local cur = redis.call('HMGET', KEYS[1], 'runId', 'state')
if ARGV[5] ~= '' and cur[1] == ARGV[1] and cur[2] == 'running' then
  raise(KEYS[1], ARGV[6])
  emit(KEYS[1], KEYS[2], ARGV[3], ARGV[2], ARGV[1], 'permission_cancelled', ARGV[5], '')
end
return 1
