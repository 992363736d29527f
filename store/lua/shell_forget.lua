-- shell_forget.lua deletes an ended terminal's keys before they expire, if
-- it is still ended: a key opened again since (shell_open) is left alone.
--
-- KEYS[1] shell hash   KEYS[2] output stream   KEYS[3] output chunk sizes list
--
-- Returns 1 when deleted, else 0.
if redis.call('HGET', KEYS[1], 'state') ~= 'exited' then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
