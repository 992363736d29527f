-- history_read.lua notes that a user's client read a session's history up
-- to a seq, for a short while: the lowest such seq of the while, so that
-- of two tabs that read it one after the other, the first is not told it
-- has what only the second read. A lower seq replaces the note (and its
-- time); a higher one leaves it to expire.
--
-- KEYS[1] the note (string)
-- ARGV[1] seq               ARGV[2] seconds the note lasts
--
-- Returns the seq noted.
local seq = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if cur and cur <= seq then
  return cur
end
redis.call('SET', KEYS[1], seq, 'EX', ARGV[2])
return seq
