-- run_claim.lua records the worker that runs a run. It succeeds only while
-- the run is current, running and unclaimed (or already claimed by this
-- same worker), so an aborted or reaped run is never started.
--
-- KEYS[1] session hash
-- ARGV[1] runId             ARGV[2] worker id
--
-- Returns 1 when the worker owns the run, 0 otherwise.
local cur = redis.call('HMGET', KEYS[1], 'runId', 'state', 'worker')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then
  return 0
end
if cur[3] and cur[3] ~= '' and cur[3] ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'worker', ARGV[2])
return 1
