-- run_append.lua appends events of a run, in order, if the run is still the
-- session's current running run; otherwise it changes nothing.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- ARGV[1] runId             ARGV[2] stream MAXLEN
-- ARGV[3] pub/sub channel   ARGV[4] number of events N
-- ARGV[5] seq floor (see raise in prelude.lua; 0 for none)
-- ARGV[6] batch: the writer's number of this append in the run (1, 2, …),
--         or 0 for none. The hash's appendBatch ("<runId>:<batch>") is the
--         last one taken: a batch not above it is a retry of an append
--         whose reply was lost, and changes nothing.
-- ARGV[7 .. 6+2N]           kind, body pairs
-- ARGV[7+2N ..]             field, value pairs to set on the session hash
--
-- Returns the seq of the last event (of the session, for a repeated
-- batch), or the error "STALE".
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'runId', 'state', 'appendBatch')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then
  return redis.error_reply('STALE')
end
local batch = tonumber(ARGV[6]) or 0
if batch > 0 and cur[3] then
  local run, taken = string.match(cur[3], '^(.*):(%d+)$')
  if run == ARGV[1] and tonumber(taken) >= batch then
    return tonumber(redis.call('HGET', hash, 'lastSeq') or '0')
  end
end
raise(hash, ARGV[5])
local n = tonumber(ARGV[4])
local seq = tonumber(redis.call('HGET', hash, 'lastSeq') or '0')
for i = 0, n - 1 do
  seq = emit(hash, KEYS[2], ARGV[3], ARGV[2], ARGV[1], ARGV[7 + 2 * i], ARGV[8 + 2 * i], '')
end
for i = 7 + 2 * n, #ARGV, 2 do
  redis.call('HSET', hash, ARGV[i], ARGV[i + 1])
end
if batch > 0 then
  redis.call('HSET', hash, 'appendBatch', ARGV[1] .. ':' .. int(batch))
end
return seq
