-- shell_append.lua appends output chunks of a terminal generation: each
-- chunk takes the next seq and goes into the output stream under the id
-- "<seq>-0". They are published as a group: "O <gen> <first seq> <n>",
-- then the n chunks as they are (shellgroups.go: a chunk put into a new
-- Lua string would cost Redis another pass over its bytes).
-- The stream is then trimmed, once per call rather than once per chunk, to
-- at most MAXLEN chunks and at most the byte budget (the newest chunk always
-- stays): a flood of large chunks must not hold tens of MB per terminal.
-- The hash's outBytes is the size of what the stream holds, and the sizes
-- list the size of each chunk in it, oldest first, so that trimming never
-- reads the chunks back. A generation that was replaced changes nothing.
--
-- KEYS[1] shell hash   KEYS[2] output stream   KEYS[3] chunk sizes list
-- ARGV[1] generation   ARGV[2] stream MAXLEN   ARGV[3] pub/sub channel
-- ARGV[4] byte budget of the stream
-- ARGV[5] batch: the worker's number of this append in the generation (1,
--         2, …), or 0 for none; one not above the hash's appendBatch was
--         taken already (a retry after a lost reply) and changes nothing
-- ARGV[6] floor: the last seq the writer appended (0 for none). A Redis
--         that lost its last writes (a failover's replica, an older AOF or
--         snapshot) has a lower seq in the hash; the chunks then go on past
--         the floor, since the terminal's sockets already had the lost
--         seqs and would skip new output given them.
-- ARGV[7 ..] chunks
--
-- Returns the seq of the last chunk (the terminal's, for a repeated
-- batch), or -1 for a stale generation, or one that was ended (a gateway
-- took its worker for dead: its sockets got the exit, and the worker,
-- stalled meanwhile, must end it rather than go on into a stream nobody
-- reads).
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'gen', 'seq', 'outBytes', 'appendBatch', 'state')
if cur[1] ~= ARGV[1] or cur[5] == 'exited' then
  return -1
end
local seq = tonumber(cur[2] or '0')
local bytes = tonumber(cur[3] or '0')
local batch = tonumber(ARGV[5]) or 0
if batch > 0 then
  if tonumber(cur[4] or '0') >= batch then
    return seq
  end
  redis.call('HSET', hash, 'appendBatch', ARGV[5])
end
if cur[5] == 'starting' then
  -- Output means the worker started it, even if its own word of that
  -- (shell_set) was refused by an outage or lost with Redis's last writes:
  -- the reaper ends a terminal left starting.
  redis.call('HSET', hash, 'state', 'running')
end
local floor = tonumber(ARGV[6]) or 0
if floor > seq then
  seq = floor
end
local first = seq + 1
for i = 7, #ARGV do
  seq = seq + 1
  local s = string.format('%d', seq)
  redis.call('XADD', KEYS[2], s .. '-0', 'seq', s, 'data', ARGV[i])
  redis.call('RPUSH', KEYS[3], #ARGV[i])
  bytes = bytes + #ARGV[i]
end
if seq >= first then
  redis.call('PUBLISH', ARGV[3], string.format('O %s %d %d', ARGV[1], first, seq - first + 1))
  for i = 7, #ARGV do
    redis.call('PUBLISH', ARGV[3], ARGV[i])
  end
end

local maxlen = tonumber(ARGV[2])
local held
bytes, held = trim_output(KEYS[2], KEYS[3], bytes, maxlen, tonumber(ARGV[4]))
if held > maxlen then
  -- A terminal opened before sizes were kept: trimmed by count.
  redis.call('XTRIM', KEYS[2], 'MAXLEN', maxlen)
end
redis.call('HSET', hash, 'seq', string.format('%d', seq), 'outBytes', string.format('%d', bytes))
return seq
