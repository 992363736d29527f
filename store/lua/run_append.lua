-- run_append.lua appends events of a run, in order, if the run is still the
-- session's current running run; otherwise it changes nothing.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] provider session index (hash: provider session id -> session id)
-- ARGV[1] runId             ARGV[2] stream MAXLEN
-- ARGV[3] pub/sub channel   ARGV[4] number of events N
-- ARGV[5 .. 4+2N]           kind, body pairs
-- ARGV[5+2N ..]             field, value pairs to set on the session hash
--
-- Returns the seq of the last event, or the error "STALE".
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'runId', 'state', 'id')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then
  return redis.error_reply('STALE')
end
local n = tonumber(ARGV[4])
local seq = tonumber(redis.call('HGET', hash, 'lastSeq') or '0')
for i = 0, n - 1 do
  seq = emit(hash, KEYS[2], ARGV[3], ARGV[2], ARGV[1], ARGV[5 + 2 * i], ARGV[6 + 2 * i], '')
end
local first = 5 + 2 * n
for i = first, #ARGV, 2 do
  redis.call('HSET', hash, ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'providerSessionId' and ARGV[i + 1] ~= '' then
    redis.call('HSETNX', KEYS[3], ARGV[i + 1], cur[3])
  end
end
return seq
