-- run_accept.lua starts a run on a session, atomically: it refuses when the
-- session is running (busy), else creates the session when it is new, takes
-- a runId from Redis time, appends session-state-changed{running} and then
-- session_created (new sessions), and queues the job for the workers.
-- session_created comes last (PROTOCOL §3.3): a client that acts only on the
-- latest of frames arriving together must see it.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] running set       KEYS[4] owner's session set
-- KEYS[5] jobs stream       KEYS[6] owner's running set
-- ARGV[1] session id        ARGV[2] owner (for an existing session: the
--                                    owner the caller read; a mismatch is "missing")
-- ARGV[3] provider          ARGV[4] project path
-- ARGV[5] provider session id ("" if none yet)
-- ARGV[6] "new" or "existing"
-- ARGV[7] job JSON          ARGV[8] session_created body ("" for none)
-- ARGV[9] running session-state-changed body
-- ARGV[10] stream MAXLEN    ARGV[11] pub/sub channel
-- ARGV[12] jobs MAXLEN
-- ARGV[13] most runs the owner may have running at once (0: no limit)
--
-- Returns {"ok", runId, seq before this run} | {"busy", startedAt, projectPath}
--       | {"missing"} | {"exists"} | {"limit", running}.
local hash = KEYS[1]
-- over_limit reports the owner's running runs when they are at the limit.
local function over_limit()
  local limit = tonumber(ARGV[13])
  if limit > 0 and redis.call('ZCARD', KEYS[6]) >= limit then
    -- Forget entries whose run has ended some other way (a store restored
    -- from an older copy), so that a stale entry never holds a slot.
    local prefix = string.sub(hash, 1, #hash - #ARGV[1] - 1)
    for _, id in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
      if redis.call('HGET', prefix .. id .. '}', 'state') ~= 'running' then
        redis.call('ZREM', KEYS[6], id)
      end
    end
    local running = redis.call('ZCARD', KEYS[6])
    if running >= limit then
      return running
    end
  end
  return nil
end

if ARGV[6] == 'existing' then
  local cur = redis.call('HMGET', hash, 'owner', 'state', 'startedAt', 'projectPath')
  if not cur[1] or cur[1] ~= ARGV[2] then
    return {'missing'}
  end
  if cur[2] == 'running' then
    return {'busy', cur[3] or '0', cur[4] or ''}
  end
  local running = over_limit()
  if running then
    return {'limit', tostring(running)}
  end
  redis.call('HSET', hash, 'projectPath', ARGV[4])
else
  if redis.call('EXISTS', hash) == 1 then
    return {'exists'}
  end
  local running = over_limit()
  if running then
    return {'limit', tostring(running)}
  end
  local created = int(now_ms())
  redis.call('HSET', hash, 'id', ARGV[1], 'owner', ARGV[2], 'provider', ARGV[3],
    'projectPath', ARGV[4], 'providerSessionId', ARGV[5], 'createdAt', created, 'lastSeq', 0)
end

local now = now_ms()
local prev = tonumber(redis.call('HGET', hash, 'startedAt') or '0') or 0
if now <= prev then
  now = prev + 1
end
local started = int(now)
local prevSeq = redis.call('HGET', hash, 'lastSeq') or '0'
redis.call('HSET', hash, 'state', 'running', 'runId', started, 'startedAt', started,
  'statusText', '', 'canInterrupt', 1, 'worker', '', 'exitCode', '', 'updatedAt', started)
redis.call('PERSIST', hash)
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZADD', KEYS[6], now, ARGV[1])
emit(hash, KEYS[2], ARGV[11], ARGV[10], started, 'session-state-changed', ARGV[9],
  '"startedAt":' .. started .. ',"changedAt":' .. started .. ',')
if ARGV[8] ~= '' then
  emit(hash, KEYS[2], ARGV[11], ARGV[10], started, 'session_created', ARGV[8], '')
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[12], '*', 'session', ARGV[1], 'run', started, 'job', ARGV[7])
return {'ok', started, prevSeq}
