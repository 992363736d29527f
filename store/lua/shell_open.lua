-- shell_open.lua starts a new terminal generation under a shell key, if the
-- key is still at the generation the caller read: two gateways opening the
-- same key at once start one terminal, and the loser reattaches to it. It
-- resets the hash, drops the old output (seq starts again at 1) and queues
-- the open control in the chosen worker's inbox, all at once, so keystrokes
-- queued after it reach the worker after the open.
--
-- KEYS[1] shell hash   KEYS[2] output stream   KEYS[3] worker inbox
-- KEYS[4] owner's open terminals (sorted set of shell keys)
-- KEYS[5] output chunk sizes list
-- ARGV[1] generation the caller read ('0' for none)
-- ARGV[2] new generation   ARGV[3] worker id   ARGV[4] owner
-- ARGV[5] projectPath      ARGV[6] provider    ARGV[7] command
-- ARGV[8] cols             ARGV[9] rows        ARGV[10] open control JSON
-- ARGV[11] inbox MAXLEN
-- ARGV[12] shell key   ARGV[13] most terminals the owner may have open
--                              (0: no limit)
--
-- Returns 1 when opened, 0 when the generation moved on, -1 when the owner
-- has the most terminals open they may.
local hash = KEYS[1]
local cur = redis.call('HGET', hash, 'gen') or '0'
if cur ~= ARGV[1] then
  return 0
end
local limit = tonumber(ARGV[13])
if limit > 0 and not redis.call('ZSCORE', KEYS[4], ARGV[12])
    and redis.call('ZCARD', KEYS[4]) >= limit then
  -- Forget terminals that ended without telling (their hash expired or
  -- says exited), so that a stale entry never holds a slot.
  local prefix = string.sub(hash, 1, #hash - #ARGV[12] - 1)
  for _, key in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    local state = redis.call('HGET', prefix .. key .. '}', 'state')
    if not state or state == 'exited' then
      redis.call('ZREM', KEYS[4], key)
    end
  end
  if redis.call('ZCARD', KEYS[4]) >= limit then
    return -1
  end
end
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('DEL', hash, KEYS[2], KEYS[5])
redis.call('HSET', hash,
  'gen', ARGV[2], 'worker', ARGV[3], 'owner', ARGV[4], 'projectPath', ARGV[5],
  'provider', ARGV[6], 'command', ARGV[7], 'cols', ARGV[8], 'rows', ARGV[9],
  'state', 'starting', 'seq', '0', 'attached', '0', 'detachedAt', now,
  'watchedAt', now, 'createdAt', now)
redis.call('ZADD', KEYS[4], now, ARGV[12])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], '*', 'msg', ARGV[10])
return 1
