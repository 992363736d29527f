-- run_accept.lua starts a run on a session, atomically: it refuses when the
-- session is running (busy), else creates the session when it is new, takes
-- a runId from Redis time, appends session-state-changed{running} and then
-- session_created (new sessions), and keeps the job beside the session, for
-- a requeue if the job stream loses it. session_created comes last (PROTOCOL
-- §3.3): a client that acts only on the latest of frames arriving together
-- must see it. It touches the session's slot only: the caller queues the
-- job and updates the indexes (running set, the owner's sets) around it.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- KEYS[3] session job (string: the job JSON of the current run)
-- ARGV[1] session id        ARGV[2] owner (for an existing session: the
--                                    owner the caller read; a mismatch is "missing")
-- ARGV[3] provider          ARGV[4] project path
-- ARGV[5] provider session id ("" if none yet)
-- ARGV[6] "new" or "existing"
-- ARGV[7] job JSON          ARGV[8] session_created body ("" for none)
-- ARGV[9] running session-state-changed body
-- ARGV[10] stream limits "<events> <bytes>" (see keep in prelude.lua)
-- ARGV[11] pub/sub channel
-- ARGV[12] seq floor (see raise in prelude.lua; 0 for none)
-- ARGV[13] accept id: the caller's, one per Accept. go-redis writes a
--          script again when a stalled Redis does not answer within its
--          read timeout, and Redis runs both copies when it goes on; the
--          copy of an accept that was taken answers as the first did,
--          rather than "busy" (or "exists") for a run that is starting.
-- ARGV[14] deadline, Unix ms in Redis's clock (0: none): past it nothing
--          is written, since the caller stopped waiting and told its user
--          the command failed.
-- ARGV[15] "1" when a new session takes the id of a conversation agentgate
--          has not recorded (app.Session.Unrecorded), else "0" or absent.
--
-- Returns {"ok", runId, seq before this run} | {"busy", startedAt, projectPath}
--       | {"missing"} | {"exists"} | {"late"}.
local hash = KEYS[1]

if ARGV[13] ~= '' then
  local taken = redis.call('HMGET', hash, 'acceptId', 'runId', 'acceptSeq')
  if taken[1] == ARGV[13] then
    return {'ok', taken[2] or '0', taken[3] or '0'}
  end
end
local deadline = tonumber(ARGV[14]) or 0
if deadline > 0 and now_ms() > deadline then
  return {'late'}
end

if ARGV[6] == 'existing' then
  local cur = redis.call('HMGET', hash, 'owner', 'state', 'startedAt', 'projectPath')
  if not cur[1] or cur[1] ~= ARGV[2] then
    return {'missing'}
  end
  if cur[2] == 'running' then
    return {'busy', cur[3] or '0', cur[4] or ''}
  end
  redis.call('HSET', hash, 'projectPath', ARGV[4])
else
  if redis.call('EXISTS', hash) == 1 then
    return {'exists'}
  end
  local created = int(now_ms())
  redis.call('HSET', hash, 'id', ARGV[1], 'owner', ARGV[2], 'provider', ARGV[3],
    'projectPath', ARGV[4], 'providerSessionId', ARGV[5], 'createdAt', created, 'lastSeq', 0)
  if ARGV[15] == '1' then
    redis.call('HSET', hash, 'unrecorded', 1)
  end
end
raise(hash, ARGV[12])

local now = now_ms()
local prev = tonumber(redis.call('HGET', hash, 'startedAt') or '0') or 0
if now <= prev then
  now = prev + 1
end
local started = int(now)
local prevSeq = redis.call('HGET', hash, 'lastSeq') or '0'
redis.call('HSET', hash, 'state', 'running', 'runId', started, 'startedAt', started,
  'statusText', '', 'canInterrupt', 1, 'worker', '', 'exitCode', '', 'updatedAt', started,
  'acceptId', ARGV[13], 'acceptSeq', prevSeq)
redis.call('PERSIST', hash)
redis.call('PERSIST', KEYS[2])
if not redis.call('HGET', hash, 'streamLen') or redis.call('EXISTS', KEYS[2]) == 0 then
  -- A stream that expired, or one from before its counts were kept.
  local n, bytes = count_stream(KEYS[2])
  redis.call('HSET', hash, 'streamLen', int(n), 'streamBytes', int(bytes))
end
redis.call('SET', KEYS[3], ARGV[7])
emit(hash, KEYS[2], ARGV[11], ARGV[10], started, 'session-state-changed', ARGV[9],
  '"startedAt":' .. started .. ',"changedAt":' .. started .. ',')
if ARGV[8] ~= '' then
  emit(hash, KEYS[2], ARGV[11], ARGV[10], started, 'session_created', ARGV[8], '')
end
return {'ok', started, prevSeq}
