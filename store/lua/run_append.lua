-- run_append.lua appends events of a run, in order, if the run is still the
-- session's current running run; otherwise it changes nothing.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- ARGV[1] runId             ARGV[2] stream MAXLEN
-- ARGV[3] pub/sub channel   ARGV[4] number of events N
-- ARGV[5] seq floor (see raise in prelude.lua; 0 for none)
-- ARGV[6 .. 5+2N]           kind, body pairs
-- ARGV[6+2N ..]             field, value pairs to set on the session hash
--
-- Returns the seq of the last event, or the error "STALE".
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'runId', 'state')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then
  return redis.error_reply('STALE')
end
raise(hash, ARGV[5])
local n = tonumber(ARGV[4])
local seq = tonumber(redis.call('HGET', hash, 'lastSeq') or '0')
for i = 0, n - 1 do
  seq = emit(hash, KEYS[2], ARGV[3], ARGV[2], ARGV[1], ARGV[6 + 2 * i], ARGV[7 + 2 * i], '')
end
for i = 6 + 2 * n, #ARGV, 2 do
  redis.call('HSET', hash, ARGV[i], ARGV[i + 1])
end
return seq
