-- shell_forget.lua deletes an ended terminal's keys before they expire, if
-- it is still ended and no socket is attached to it: a key opened again
-- since (shell_open) is left alone, and so is the output a socket is still
-- reading (it expires with the retention).
--
-- KEYS[1] shell hash   KEYS[2] output stream   KEYS[3] output chunk sizes list
--
-- Returns 1 when deleted, else 0.
local cur = redis.call('HMGET', KEYS[1], 'state', 'attached')
if cur[1] ~= 'exited' or (tonumber(cur[2] or '0') or 0) > 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
