-- shell_append.lua appends output chunks of a terminal generation: each
-- chunk takes the next seq, goes into the output stream under the id
-- "<seq>-0" and is published as
-- "o <gen> <seq> <data>".
-- The stream is then trimmed, once per call rather than once per chunk, to
-- at most MAXLEN chunks and at most the byte budget (the newest chunk always
-- stays): a flood of large chunks must not hold tens of MB per terminal.
-- The hash's outBytes is the size of what the stream holds. A generation
-- that was replaced changes nothing.
--
-- KEYS[1] shell hash   KEYS[2] output stream
-- ARGV[1] generation   ARGV[2] stream MAXLEN   ARGV[3] pub/sub channel
-- ARGV[4] byte budget of the stream
-- ARGV[5 ..] chunks
--
-- Returns the seq of the last chunk, or -1 for a stale generation.
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'gen', 'seq', 'outBytes')
if cur[1] ~= ARGV[1] then
  return -1
end
local seq = tonumber(cur[2] or '0')
local bytes = tonumber(cur[3] or '0')
for i = 5, #ARGV do
  seq = seq + 1
  local s = string.format('%d', seq)
  redis.call('XADD', KEYS[2], s .. '-0', 'seq', s, 'data', ARGV[i])
  redis.call('PUBLISH', ARGV[3], 'o ' .. ARGV[1] .. ' ' .. s .. ' ' .. ARGV[i])
  bytes = bytes + #ARGV[i]
end

local maxlen, budget = tonumber(ARGV[2]), tonumber(ARGV[4])
local n = redis.call('XLEN', KEYS[2])
local last = nil -- seq of the newest chunk trimmed
while n > 1 and (n > maxlen or bytes > budget) do
  local batch = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)
  for _, e in ipairs(batch) do
    if n <= 1 or (n <= maxlen and bytes <= budget) then
      break
    end
    -- e[2] is {'seq', s, 'data', d}
    bytes = bytes - #e[2][4]
    n = n - 1
    last = tonumber(e[2][2])
  end
  if last then
    redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', last + 1) .. '-0')
  end
end
redis.call('HSET', hash, 'seq', string.format('%d', seq), 'outBytes', string.format('%d', bytes))
return seq
