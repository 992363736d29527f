-- run_complete.lua ends a run: the one door through which normal exit,
-- failure, abort and worker loss all pass, so the first caller wins and
-- every later one changes nothing. It appends any final events (error rows),
-- a permission_cancelled for each request still pending, the terminal
-- session-state-changed, the run's single complete, and releases the
-- session. complete comes last (PROTOCOL §3.3): a client that acts only on
-- the latest of frames arriving together must see it. It touches the
-- session's slot only: the caller updates the indexes after it.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] session permissions hash
-- KEYS[4] session job
-- ARGV[1] runId, or "" for whatever run is current (abort)
-- ARGV[2] stream limits "<events> <bytes>"     ARGV[3] pub/sub channel
-- ARGV[4] final state       ARGV[5] exit code
-- ARGV[6] retention of the stream once finished, seconds
-- ARGV[7] complete body     ARGV[8] session-state-changed body
-- ARGV[9] permission_cancelled body in which "@REQ@" stands for the
--         request id (ids are plain: see app.ValidRequestID)
-- ARGV[10] seq floor (see raise in prelude.lua; 0 for none)
-- ARGV[11] number of events N to append before complete
-- ARGV[12] the worker ending its own run, or "" (abort, reaper): refused
--          (STALE) when another worker holds the run (see run_append.lua);
--          "-" (the reaper, for a run no worker claimed): refused once
--          any worker holds it
-- ARGV[13 .. 12+2N]         kind, body pairs
--
-- Returns {runId, worker, seq of complete, owner, time of the end,
-- request ids that were pending...}, or the error "STALE".
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'runId', 'state', 'id', 'worker', 'startedAt', 'owner')
if cur[2] ~= 'running' or (ARGV[1] ~= '' and cur[1] ~= ARGV[1]) then
  return redis.error_reply('STALE')
end
if ARGV[12] ~= '' and cur[4] and cur[4] ~= '' and cur[4] ~= ARGV[12] then
  return redis.error_reply('STALE')
end
-- The job goes first: DEL cannot grow memory, and Redis at its maxmemory
-- refuses only a script's first write, so a run's end (small: a few
-- events) is recorded when Redis is full too, and its clients hear it.
redis.call('DEL', KEYS[4])
raise(hash, ARGV[10])
local runId = cur[1]
local n = tonumber(ARGV[11])
for i = 0, n - 1 do
  emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, ARGV[13 + 2 * i], ARGV[14 + 2 * i], '')
end
local pending = redis.call('HKEYS', KEYS[3])
table.sort(pending)
for _, rid in ipairs(pending) do
  local body = string.gsub(ARGV[9], '@REQ@', rid)
  emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, 'permission_cancelled', body, '')
end
local now = now_ms()
local changed = int(now)
emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, 'session-state-changed', ARGV[8],
  '"startedAt":' .. (cur[5] or '0') .. ',"changedAt":' .. changed .. ',')
local seq = emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, 'complete', ARGV[7], '')
redis.call('HSET', hash, 'state', ARGV[4], 'exitCode', ARGV[5], 'statusText', '',
  'canInterrupt', 0, 'updatedAt', changed)
redis.call('DEL', KEYS[3])
redis.call('EXPIRE', KEYS[2], ARGV[6])
local out = {runId, cur[4] or '', seq, cur[6] or '', changed}
for _, rid in ipairs(pending) do
  out[#out + 1] = rid
end
return out
