-- run_append.lua appends events of a run, in order, if the run is still the
-- session's current running run; otherwise it changes nothing.
--
-- KEYS[1] session hash      KEYS[2] session event stream
-- ARGV[1] runId             ARGV[2] stream limits "<events> <bytes>"
-- ARGV[3] pub/sub channel   ARGV[4] number of events N
-- ARGV[5] seq floor (see raise in prelude.lua; 0 for none)
-- ARGV[6] batch: the writer's number of this append in the run (1, 2, …),
--         or 0 for none. The hash's appendBatch ("<runId>:<batch>") is the
--         last one taken: a batch not above it is a retry of an append
--         whose reply was lost, and changes nothing.
-- ARGV[7] the worker that claimed the run, or "" for none
-- ARGV[8 .. 7+2N]           kind, body pairs
-- ARGV[8+2N ..]             field, value pairs to set on the session hash
--
-- Returns the seq of the last event (of the session, for a repeated
-- batch), or the error "STALE". A run that another worker holds is stale
-- to this one: a Redis restarted without its last writes (or a failover)
-- can lose a claim, and the run's job, delivered again, be claimed by a
-- second worker; the first stops at its next append. A claim that was lost
-- is written again by the append, so that a second worker's claim fails.
--
-- The script makes four calls for one event (HMGET, XADD, PUBLISH, HSET),
-- not emit's seven: it is the one every provider line goes through, and
-- each call costs Redis a few microseconds of Lua bridging. The frames it
-- writes are emit's (prelude.lua), byte for byte.
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'runId', 'state', 'appendBatch', 'lastSeq', 'streamLen', 'streamBytes', 'worker')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then
  return redis.error_reply('STALE')
end
local worker = ARGV[7]
if worker ~= '' and cur[7] and cur[7] ~= '' and cur[7] ~= worker then
  return redis.error_reply('STALE')
end
local seq = tonumber(cur[4] or '0') or 0
local batch = tonumber(ARGV[6]) or 0
if batch > 0 and cur[3] then
  local run, taken = string.match(cur[3], '^(.*):(%d+)$')
  if run == ARGV[1] and tonumber(taken) >= batch then
    return seq
  end
end
local set = {}
-- As raise in prelude.lua: seqs up to the floor are skipped, never reused.
local floor = tonumber(ARGV[5]) or 0
if floor > seq then
  seq = floor
  set[#set + 1] = 'lostUpTo'
  set[#set + 1] = int(floor)
end
local n = tonumber(ARGV[4])
local prefix = ',"runId":"' .. ARGV[1] .. '",'
local held = (tonumber(cur[5] or '0') or 0) + n
local bytes = tonumber(cur[6] or '0') or 0
for i = 0, n - 1 do
  seq = seq + 1
  local s = int(seq)
  local data = '{"seq":' .. s .. prefix .. string.sub(ARGV[9 + 2 * i], 2)
  redis.call('XADD', KEYS[2], s .. '-0', 'seq', s, 'kind', ARGV[8 + 2 * i], 'data', data)
  publish(ARGV[3], s, data)
  bytes = bytes + #data
end
held, bytes = keep(KEYS[2], seq, held, bytes, ARGV[2])
set[#set + 1] = 'lastSeq'
set[#set + 1] = int(seq)
set[#set + 1] = 'streamLen'
set[#set + 1] = int(held)
set[#set + 1] = 'streamBytes'
set[#set + 1] = int(bytes)
for i = 8 + 2 * n, #ARGV, 2 do
  set[#set + 1] = ARGV[i]
  set[#set + 1] = ARGV[i + 1]
end
if worker ~= '' and (not cur[7] or cur[7] == '') then
  set[#set + 1] = 'worker'
  set[#set + 1] = worker
end
if batch > 0 then
  set[#set + 1] = 'appendBatch'
  set[#set + 1] = ARGV[1] .. ':' .. int(batch)
end
redis.call('HSET', hash, unpack(set))
return seq
