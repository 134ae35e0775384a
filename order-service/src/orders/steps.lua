-- An order's steps, kept in its hash: one field 'st', a line per step, oldest first, each
-- "name status at", name and status as a letter each (older orders' in full) and `at` in
-- milliseconds since the epoch, or, for a step written together with the one before it,
-- `+<ms>` after that one (orders::store::step_text and relative_steps write them, parse_steps
-- reads them; this file never reads one: the order service does the arithmetic, which cost
-- this script more than the fsync of the digits when it was done here). The HSET that records
-- a change writes its steps too: a list beside the hash cost a command and its key name per
-- step, a field per step its name. Orders stored before #29's eleventh pass keep theirs in
-- 's1'..'sN', 'n' counting them, and go on so.
--
-- steps_of(n, st): the order's steps as read (its 'n' and 'st', false or nil for none), for
--   push_steps.
-- push_steps(set, cur, steps): adds each line of `steps` (one step, or several recorded in one
--   write, oldest first) to `set`, the field/value pairs of that HSET, and to `cur` (from
--   steps_of), so that a second call in the same script adds after the first.
local function steps_of(n, st)
  return {n = tonumber(n), st = st or nil}
end
local function push_steps(set, cur, steps)
  if cur.n then
    for step in string.gmatch(steps, '[^\n]+') do
      cur.n = cur.n + 1
      set[#set + 1] = 's' .. string.format('%d', cur.n); set[#set + 1] = step
    end
    set[#set + 1] = 'n'; set[#set + 1] = string.format('%d', cur.n)
    return
  end
  cur.st = cur.st and (cur.st .. '\n' .. steps) or steps
  set[#set + 1] = 'st'; set[#set + 1] = cur.st
end
