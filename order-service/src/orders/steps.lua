-- An order's steps, kept in its hash: 'n' counts them and 's1'..'sN' hold them, each
-- "name status at" (orders::store::parse_step reads them). The HSET that records a change
-- writes its step too: a list beside the hash cost a command and its key name per step.
--
-- push_step(set, n, step): adds the step, as number n + 1, to `set`, the field/value pairs of
--   that HSET; `n` is the order's 'n' as read (nil for none). Returns n + 1.
-- push_steps(set, n, steps): as push_step for each line of `steps` (several steps recorded in
--   one write, oldest first), with one 'n'. Returns the new n.
local function push_step(set, n, step)
  local i = string.format('%d', (tonumber(n) or 0) + 1)
  set[#set + 1] = 'n'; set[#set + 1] = i
  set[#set + 1] = 's' .. i; set[#set + 1] = step
  return i
end
local function push_steps(set, n, steps)
  local i = tonumber(n) or 0
  for step in string.gmatch(steps, '[^\n]+') do
    i = i + 1
    set[#set + 1] = 's' .. string.format('%d', i); set[#set + 1] = step
  end
  set[#set + 1] = 'n'; set[#set + 1] = string.format('%d', i)
  return i
end
