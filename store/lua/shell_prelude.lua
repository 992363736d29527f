-- shell_prelude.lua is prepended to the terminal scripts that trim a
-- terminal's output (shell_append.lua, shell_exit.lua) when the scripts are
-- loaded, so that both trim it the same way.

-- trim_output drops the oldest chunks of a terminal's output stream while
-- it holds more than maxlen chunks or more than budget bytes, never the
-- newest. The sizes list gives each chunk's size, oldest first, so that
-- no chunk is read back; bytes is what the stream holds. The trim counts
-- chunks, not seqs: after a Redis that lost writes the seqs have a hole.
-- Returns the bytes left and the chunks held.
local function trim_output(out, sizes, bytes, maxlen, budget)
  local n = redis.call('XLEN', out)
  local trimmed = 0
  while n - trimmed > 1 and (n - trimmed > maxlen or bytes > budget) do
    local size = redis.call('LPOP', sizes)
    if not size then
      break -- a terminal opened before sizes were kept
    end
    bytes = bytes - tonumber(size)
    trimmed = trimmed + 1
  end
  if trimmed > 0 then
    redis.call('XTRIM', out, 'MAXLEN', string.format('%d', n - trimmed))
  end
  return bytes, n - trimmed
end

