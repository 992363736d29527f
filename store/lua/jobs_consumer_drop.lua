-- jobs_consumer_drop.lua deletes a consumer of the jobs group that holds
-- no pending job. DELCONSUMER drops the consumer's pending entries with it
-- (their jobs would never be reclaimed): the check and the delete are one
-- step, so a job the consumer read meanwhile is not lost.
--
-- KEYS[1] jobs stream   ARGV[1] group   ARGV[2] consumer
--
-- Returns 1 when it deleted the consumer, else 0.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
