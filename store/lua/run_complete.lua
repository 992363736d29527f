-- run_complete.lua ends a run: the one door through which normal exit,
-- failure, abort and worker loss all pass, so the first caller wins and
-- every later one changes nothing. It appends any final events (error rows),
-- a permission_cancelled for each request still pending, the terminal
-- session-state-changed, the run's single complete, and releases the
-- session. complete comes last (PROTOCOL §3.3): a client that acts only on
-- the latest of frames arriving together must see it.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] running set       KEYS[4] owner's session set
-- KEYS[5] session permissions hash
-- KEYS[6] permission index (hash: request id -> session id)
-- KEYS[7] owner's running set
-- ARGV[1] runId, or "" for whatever run is current (abort)
-- ARGV[2] stream MAXLEN     ARGV[3] pub/sub channel
-- ARGV[4] final state       ARGV[5] exit code
-- ARGV[6] retention of the stream once finished, seconds
-- ARGV[7] complete body     ARGV[8] session-state-changed body
-- ARGV[9] permission_cancelled body in which "@REQ@" stands for the
--         request id (ids are plain: see app.ValidRequestID)
-- ARGV[10] number of events N to append before complete
-- ARGV[11 .. 10+2N]         kind, body pairs
--
-- Returns {runId, worker, seq of complete}, or the error "STALE".
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'runId', 'state', 'id', 'worker', 'startedAt')
if cur[2] ~= 'running' or (ARGV[1] ~= '' and cur[1] ~= ARGV[1]) then
  return redis.error_reply('STALE')
end
local runId = cur[1]
local n = tonumber(ARGV[10])
for i = 0, n - 1 do
  emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, ARGV[11 + 2 * i], ARGV[12 + 2 * i], '')
end
local pending = redis.call('HKEYS', KEYS[5])
table.sort(pending)
for _, rid in ipairs(pending) do
  local body = string.gsub(ARGV[9], '@REQ@', rid)
  emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, 'permission_cancelled', body, '')
  if redis.call('HGET', KEYS[6], rid) == cur[3] then
    redis.call('HDEL', KEYS[6], rid)
  end
end
local now = now_ms()
local changed = int(now)
emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, 'session-state-changed', ARGV[8],
  '"startedAt":' .. (cur[5] or '0') .. ',"changedAt":' .. changed .. ',')
local seq = emit(hash, KEYS[2], ARGV[3], ARGV[2], runId, 'complete', ARGV[7], '')
redis.call('HSET', hash, 'state', ARGV[4], 'exitCode', ARGV[5], 'statusText', '',
  'canInterrupt', 0, 'updatedAt', changed)
redis.call('ZREM', KEYS[3], cur[3])
redis.call('ZREM', KEYS[7], cur[3])
redis.call('ZADD', KEYS[4], now, cur[3])
redis.call('DEL', KEYS[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {runId, cur[4] or '', seq}
