-- prelude.lua is prepended to every run script when the scripts are loaded,
-- so that all of them write events the same way.

-- now_ms returns Redis time in milliseconds as a Lua number.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- int formats an integer without an exponent (tostring may give 1e+06).
local function int(n)
  return string.format('%d', n)
end

-- emit appends one event to a session: it takes the session's next seq,
-- writes the event into the session's stream under the id "<seq>-0" and
-- publishes it on the session's channel. body is the event's JSON object
-- from the caller; the stored frame starts with seq and runId, then extra
-- (a fragment of `"name":value,` pairs), then the body's own fields.
local function emit(hash, stream, channel, maxlen, runId, kind, body, extra)
  local seq = redis.call('HINCRBY', hash, 'lastSeq', 1)
  local s = int(seq)
  local data = '{"seq":' .. s .. ',"runId":"' .. runId .. '",' .. extra .. string.sub(body, 2)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, s .. '-0', 'seq', s, 'kind', kind, 'data', data)
  redis.call('PUBLISH', channel, data)
  return seq
end

-- raise moves the session's lastSeq up to floor, the highest seq the
-- calling process has seen of this session, when Redis has less: a Redis
-- Cluster failover can lose the last writes of a master that were not yet
-- copied to its replica, while clients already had those events. Their
-- seqs are then skipped, never given to other events, and lostUpTo records
-- the hole so that a replay across it says recovered:false.
local function raise(hash, floor)
  local f = tonumber(floor) or 0
  if f <= 0 then
    return
  end
  local cur = tonumber(redis.call('HGET', hash, 'lastSeq') or '0') or 0
  if cur < f then
    redis.call('HSET', hash, 'lastSeq', int(f), 'lostUpTo', int(f))
  end
end
