-- shell_idle.lua tells a worker how long a terminal generation has been
-- without a watching socket, in Redis time: 0 while a gateway refreshes it,
-- else the milliseconds since it was last watched.
--
-- KEYS[1] shell hash
-- ARGV[1] generation
--
-- Returns the idle milliseconds, or -1 for a stale generation or one that
-- was ended (shell_append.lua says why).
local cur = redis.call('HMGET', KEYS[1], 'gen', 'watchedAt', 'state')
if cur[1] ~= ARGV[1] or cur[3] == 'exited' then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = now - tonumber(cur[2] or '0')
if idle < 0 then
  idle = 0
end
return idle
