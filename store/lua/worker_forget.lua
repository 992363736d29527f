-- worker_forget.lua drops a worker from the registry if its last heartbeat
-- there is older than a cutoff: the reaper found it dead at the cutoff, and
-- a worker that beat since (it was stopped, SIGSTOP, a paused VM, and went
-- on) is alive and stays.
--
-- KEYS[1] registry   ARGV[1] cutoff (ms, the score's clock)   ARGV[2] worker id
--
-- Returns 1 when it dropped the worker, else 0.
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if score and tonumber(score) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
