-- An order's steps, kept in its hash: 'n' counts them and 's1'..'sN' hold them, each
-- "name status at", `at` in milliseconds since the epoch (orders::store::step_text writes
-- them, parse_step reads them). The HSET that records a change writes its step too: a list
-- beside the hash cost a command and its key name per step.
--
-- push_steps(set, n, steps): adds each line of `steps` (one step, or several recorded in one
--   write, oldest first) as steps n + 1, n + 2, … to `set`, the field/value pairs of that HSET,
--   with one 'n'; `n` is the order's 'n' as read (nil for none). Returns the new n.
local function push_steps(set, n, steps)
  local i = tonumber(n) or 0
  for step in string.gmatch(steps, '[^\n]+') do
    i = i + 1
    set[#set + 1] = 's' .. string.format('%d', i); set[#set + 1] = step
  end
  set[#set + 1] = 'n'; set[#set + 1] = string.format('%d', i)
  return i
end
