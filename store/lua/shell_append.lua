-- shell_append.lua appends output chunks of a terminal generation: each
-- chunk takes the next seq, goes into the output stream under the id
-- "<seq>-0" and is published as
-- "o <gen> <seq> <data>".
-- The stream is then trimmed to exactly MAXLEN, once per call rather than
-- once per chunk. A generation that was replaced changes nothing.
--
-- KEYS[1] shell hash   KEYS[2] output stream
-- ARGV[1] generation   ARGV[2] stream MAXLEN   ARGV[3] pub/sub channel
-- ARGV[4 ..] chunks
--
-- Returns the seq of the last chunk, or -1 for a stale generation.
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'gen', 'seq')
if cur[1] ~= ARGV[1] then
  return -1
end
local seq = tonumber(cur[2] or '0')
for i = 4, #ARGV do
  seq = seq + 1
  local s = string.format('%d', seq)
  redis.call('XADD', KEYS[2], s .. '-0', 'seq', s, 'data', ARGV[i])
  redis.call('PUBLISH', ARGV[3], 'o ' .. ARGV[1] .. ' ' .. s .. ' ' .. ARGV[i])
end
redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[2])
redis.call('HSET', hash, 'seq', string.format('%d', seq))
return seq
