-- shell_touch.lua records that sockets watch a terminal generation: delta
-- +1 on attach (seen is set: a socket attached to this generation once),
-- -1 on detach (detachedAt is set when none is left), 0 to
-- refresh watchedAt while sockets stay. watchedAt is refreshed by every
-- gateway that holds a socket, so a terminal whose gateway died stops being
-- watched after one detach timeout, even though `attached` stays stale.
--
-- KEYS[1] shell hash
-- ARGV[1] generation   ARGV[2] delta
--
-- Returns the number of attached sockets and the number of the terminal's
-- last claim (shell_claim.lua: a refresh hears a claim published while its
-- gateway's subscription was down), or -1 for a stale generation, -2 when
-- the terminal has no hash at all (Redis lost it with its data), or, for a
-- refresh (delta 0), -3 when the generation has exited: its exit was
-- published while the gateway's subscription was down, and is read here.
local hash = KEYS[1]
local cur = redis.call('HMGET', hash, 'gen', 'state', 'claims')
if not cur[1] then
  return -2
end
if cur[1] ~= ARGV[1] then
  return -1
end
if ARGV[2] == '0' and cur[2] == 'exited' then
  return -3
end
if cur[2] ~= 'exited' then
  -- A live terminal's hash has no TTL, so PERSIST changes nothing; as the
  -- script's first write it lets the rest (fields that are there already)
  -- run when Redis is at its maxmemory, which refuses only a script's
  -- first write: a full Redis must not make watched terminals look
  -- detached to their worker.
  redis.call('PERSIST', hash)
end
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local n = tonumber(redis.call('HGET', hash, 'attached') or '0')
local delta = tonumber(ARGV[2])
if delta ~= 0 then
  n = redis.call('HINCRBY', hash, 'attached', delta)
  if n <= 0 then
    n = 0
    redis.call('HSET', hash, 'attached', '0', 'detachedAt', now)
  else
    redis.call('HSET', hash, 'detachedAt', '', 'seen', '1')
  end
end
redis.call('HSET', hash, 'watchedAt', now)
return {n, tonumber(cur[3] or '0')}
