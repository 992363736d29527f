-- session_forget.lua deletes an idle session's keys (its hash, event
-- stream, job and pending permissions) once its owner has more sessions
-- than they may keep. A running session is left alone, and so is one that
-- another user owns (an index entry that outlived its session's id).
--
-- KEYS[1] session hash   KEYS[2] event stream   KEYS[3] job
-- KEYS[4] pending permissions
-- ARGV[1] owner
--
-- Returns {"gone", provider, provider session id, the provider ids it was
-- indexed under (space-separated)} when deleted (or already gone: "", "",
-- ""), else {"kept"}.
local cur = redis.call('HMGET', KEYS[1], 'owner', 'state', 'provider', 'providerSessionId', 'providerIds')
if cur[1] and (cur[1] ~= ARGV[1] or cur[2] == 'running') then
  return {'kept'}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return {'gone', cur[3] or '', cur[4] or '', cur[5] or ''}
