-- An order's steps, kept in its hash: one field 'st', a line per step, oldest first, each
-- "name status +d", `d` the milliseconds since the order's createdAt ("-d" before it: a step's
-- time is its replica's clock; orders::store::steps_of renders them back). The HSET that records a change writes its steps too: a list beside the
-- hash cost a command and its key name per step, a field per step its name, and a step's own
-- time 13 digits where its distance from the order's creation takes a few.
-- Orders stored before #29's eleventh pass keep theirs in 's1'..'sN', 'n' counting them, and
-- go on so; a step whose time is not in milliseconds (or an order whose createdAt is RFC 3339
-- text, as older versions wrote it) keeps its time as given.
--
-- steps_of(n, st, created): the order's steps as read (its 'n', 'st' and 'createdAt', false or
--   nil for none), for push_steps.
-- push_steps(set, cur, steps): adds each line of `steps` ("name status at", `at` in
--   milliseconds as orders::store::step_text writes it; one step, or several recorded in one
--   write, oldest first) to `set`, the field/value pairs of that HSET, and to `cur` (from
--   steps_of), so that a second call in the same script adds after the first.
local function steps_of(n, st, created)
  return {n = tonumber(n), st = st or nil, created = tonumber(created)}
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
  local lines = {cur.st}
  for step in string.gmatch(steps, '[^\n]+') do
    local name, status, at = string.match(step, '^(%S+) (%S+) (%d+)$')
    if name and cur.created then
      step = string.format('%s %s %+d', name, status, tonumber(at) - cur.created)
    end
    lines[#lines + 1] = step
  end
  cur.st = table.concat(lines, '\n')
  set[#set + 1] = 'st'; set[#set + 1] = cur.st
end
