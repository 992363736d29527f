-- shell_open.lua starts a new terminal generation under a shell key, if the
-- key is still at the generation the caller read: two gateways opening the
-- same key at once start one terminal, and the loser reattaches to it. It
-- resets the hash (but for its claims' count) and drops the old output
-- (seq starts again at 1). It
-- touches the terminal's slot only: the caller reserves the owner's
-- terminal place before and queues the open control in the worker's inbox
-- after it.
--
-- KEYS[1] shell hash   KEYS[2] output stream   KEYS[3] output chunk sizes list
-- ARGV[1] generation the caller read ('0' for none)
-- ARGV[2] new generation   ARGV[3] worker id   ARGV[4] owner
-- ARGV[5] projectPath      ARGV[6] provider    ARGV[7] command
-- ARGV[8] cols             ARGV[9] rows
--
-- Returns 1 when opened, 0 when the generation moved on.
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'gen', 'claims')
if (cur[1] or '0') ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('DEL', hash, KEYS[2], KEYS[3])
redis.call('HSET', hash,
  'gen', ARGV[2], 'worker', ARGV[3], 'owner', ARGV[4], 'projectPath', ARGV[5],
  'provider', ARGV[6], 'command', ARGV[7], 'cols', ARGV[8], 'rows', ARGV[9],
  'state', 'starting', 'seq', '0', 'attached', '0', 'detachedAt', now,
  'watchedAt', now, 'createdAt', now,
  -- Claims are numbered across generations (shell_claim.lua): a socket
  -- that took the terminal before a restart keeps its number.
  'claims', cur[2] or '0')
return 1
