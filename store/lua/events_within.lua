-- events_within.lua reads the events of a session stream from a seq on, at
-- most ARGV[2] of them, and stops before the one whose data would take
-- what it read past ARGV[3] bytes (the first is always read): a gateway
-- that holds what it read while its socket is slow (a replay, a REST
-- page) then fetches no more than it keeps, whatever the sizes of the
-- events ahead. It reads a few entries at a time, so that Redis itself
-- holds little more than the reply.
--
-- KEYS[1] session event stream
-- ARGV[1] first seq to read   ARGV[2] most events   ARGV[3] most bytes of data
--
-- Returns {id, kind, data, id, kind, data, ...} in seq order.
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local out, n, size = {}, 0, 0
local from = ARGV[1]
while n < limit do
  local batch = redis.call('XRANGE', KEYS[1], from .. '-0', '+', 'COUNT', math.min(limit - n, 8))
  if #batch == 0 then
    break
  end
  for _, e in ipairs(batch) do
    local kind, data = '', ''
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'data' then
        data = f[i + 1]
      elseif f[i] == 'kind' then
        kind = f[i + 1]
      end
    end
    if n > 0 and size + #data > budget then
      return out
    end
    out[#out + 1] = e[1]
    out[#out + 1] = kind
    out[#out + 1] = data
    n = n + 1
    size = size + #data
    if n >= limit or size >= budget then
      return out
    end
  end
  from = string.format('%d', tonumber(string.match(batch[#batch][1], '^(%d+)')) + 1)
end
return out
