-- shell_exit.lua records the end of a terminal generation once and
-- publishes "e <gen> <lastSeq> <exitCode> <signal|-> <reason>" after its
-- output.
-- A stale generation, or one already ended, changes nothing. The ended
-- terminal's output is trimmed to its last ARGV[7] bytes (the newest chunk
-- always stays): a reattach after `exit` shows the end, and a user who
-- opens and ends terminals by the hundred does not keep megabytes of each.
-- Its hash and output expire after the retention, as a finished session's
-- events do; a new generation (shell_open) writes fresh keys. The caller
-- takes the terminal out of its owner's open terminals after it.
--
-- KEYS[1] shell hash   KEYS[2] output stream
-- KEYS[3] output chunk sizes list
-- ARGV[1] generation   ARGV[2] pub/sub channel   ARGV[3] exit code
-- ARGV[4] signal name or ''   ARGV[5] reason ('exit', 'lost',
-- 'not_started', which ends a generation only while it is still starting
-- and has no output, or 'evicted', which ends it only while no socket
-- watches it, below)
-- ARGV[6] retention, seconds   ARGV[7] output kept, bytes
-- ARGV[8] ('evicted' only) how long, in ms, watchedAt may go unrefreshed
-- before the terminal counts as unwatched whatever `attached` says (the
-- gateway holding its sockets died); negative: never
-- ARGV[9] ('evicted' only) how long, in ms, a generation no socket has
-- attached to yet is left alone after its open: its gateway is attaching
-- the socket that opened it
--
-- Returns {1, owner, createdAt, the time it ended (ms)} when recorded, {-1}
-- when an eviction found the generation watched, {0} otherwise.
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'gen', 'state', 'seq', 'owner', 'createdAt', 'outBytes',
  'attached', 'watchedAt', 'seen')
if cur[1] ~= ARGV[1] or cur[2] == 'exited' or
    (ARGV[5] == 'not_started' and (cur[2] ~= 'starting' or (tonumber(cur[3] or '0') or 0) > 0)) then
  return {0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] == 'evicted' then
  local stale = tonumber(ARGV[8])
  local watched = tonumber(cur[8] or '0') or 0
  local unwatched = tonumber(cur[7] or '0') <= 0 or (stale >= 0 and watched > 0 and now - watched >= stale)
  if cur[9] ~= '1' and now - tonumber(cur[5] or '0') < tonumber(ARGV[9]) then
    unwatched = false
  end
  if not unwatched then
    return {-1}
  end
end
local bytes = tonumber(cur[6] or '0')
if bytes > tonumber(ARGV[7]) then
  bytes = trim_output(KEYS[2], KEYS[3], bytes, math.huge, tonumber(ARGV[7]))
end
redis.call('HSET', hash, 'state', 'exited', 'exitCode', ARGV[3], 'signal', ARGV[4], 'exitReason', ARGV[5],
  'outBytes', string.format('%d', bytes))
local sig = ARGV[4]
if sig == '' then
  sig = '-'
end
redis.call('EXPIRE', hash, ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[2], 'e ' .. ARGV[1] .. ' ' .. (cur[3] or '0') .. ' ' .. ARGV[3] .. ' ' .. sig .. ' ' .. ARGV[5])
return {1, cur[4] or '', cur[5] or '0', string.format('%d', now)}
