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

-- stream_limits splits a stream limits argument "<events> <bytes>": how many
-- events and how many bytes of event data a session stream keeps.
local function stream_limits(arg)
  local n, b = string.match(arg, '^(%d+) (%d+)$')
  return tonumber(n), tonumber(b)
end

-- trimSlack lets a stream hold this many events over its count before it
-- is trimmed, so that trimming by count runs once per trimSlack appends,
-- not at each.
local trimSlack = 64

-- data_size is the size of a stream entry's data field.
local function data_size(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'data' then
      return #fields[i + 1]
    end
  end
  return 0
end

-- count_stream reads a session stream through and returns how many events
-- it holds and their data size: for a stream that expired, one written
-- before streamLen and streamBytes were kept, or counts gone wrong.
local function count_stream(stream)
  local n, bytes, from = 0, 0, '-'
  while true do
    local page = redis.call('XRANGE', stream, from, '+', 'COUNT', 500)
    for _, e in ipairs(page) do
      bytes = bytes + data_size(e[2])
    end
    n = n + #page
    if #page < 500 then
      return n, bytes
    end
    from = string.format('%d', tonumber(string.match(page[#page][1], '^(%d+)')) + 1) .. '-0'
  end
end

-- keep trims a session stream to its limits: the oldest events go while it
-- holds more than its count (once past the slack) or more than its byte
-- budget of event data, never the event of seq last. n and bytes are what
-- the hash's streamLen and streamBytes say the stream holds, with the
-- events just added; keep returns them after trimming. Only the events
-- trimmed are read, so an append under the limits costs no more call.
local function keep(stream, last, n, bytes, limits)
  local maxlen, budget = stream_limits(limits)
  if n <= maxlen + trimSlack and bytes <= budget then
    return n, bytes
  end
  while n > 1 and (n > maxlen or bytes > budget) do
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 64)
    local cut = nil
    for _, e in ipairs(oldest) do
      local seq = tonumber(string.match(e[1], '^(%d+)')) or last
      if seq >= last or n <= 1 or (n <= maxlen and bytes <= budget) then
        break
      end
      cut = seq
      bytes = bytes - data_size(e[2])
      n = n - 1
    end
    if not cut then
      -- Nothing older than last, yet over: the counts went wrong.
      return count_stream(stream)
    end
    redis.call('XTRIM', stream, 'MINID', string.format('%d', cut + 1) .. '-0')
  end
  if bytes < 0 or n < 1 or n == 1 and redis.call('XLEN', stream) ~= 1 then
    -- The counts went wrong (the hash edited by hand): count afresh.
    return count_stream(stream)
  end
  return n, bytes
end

-- publish sends a stored frame on a session's channel; a frame over 1 MiB
-- goes as its seq alone ({"seq":N}), and gateways read it from the stream.
-- Redis drops a subscriber whose output buffer passes 32 MB (its default
-- client-output-buffer-limit for pub/sub), and all of a gateway's sessions
-- and terminals share its one subscriber connection: one user's large
-- events must not cut everyone's live delivery.
local function publish(channel, s, data)
  if #data > 1048576 then
    redis.call('PUBLISH', channel, '{"seq":' .. s .. '}')
  else
    redis.call('PUBLISH', channel, data)
  end
end

-- emit appends one event to a session: it takes the session's next seq,
-- writes the event into the session's stream under the id "<seq>-0",
-- publishes it on the session's channel and trims the stream to limits
-- (see keep). body is the event's JSON object from the caller; the stored
-- frame starts with seq and runId, then extra (a fragment of `"name":value,`
-- pairs), then the body's own fields.
local function emit(hash, stream, channel, limits, runId, kind, body, extra)
  local seq = redis.call('HINCRBY', hash, 'lastSeq', 1)
  local s = int(seq)
  local data = '{"seq":' .. s .. ',"runId":"' .. runId .. '",' .. extra .. string.sub(body, 2)
  redis.call('XADD', stream, s .. '-0', 'seq', s, 'kind', kind, 'data', data)
  publish(channel, s, data)
  local n = redis.call('HINCRBY', hash, 'streamLen', 1)
  local bytes = redis.call('HINCRBY', hash, 'streamBytes', #data)
  local n2, bytes2 = keep(stream, seq, n, bytes, limits)
  if n2 ~= n or bytes2 ~= bytes then
    redis.call('HSET', hash, 'streamLen', int(n2), 'streamBytes', int(bytes2))
  end
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
