-- Counters kept as fields of one hash (totals, an item's stock counts).
--
-- add_counts(hash, changes): adds each delta to its field, `changes` as {field, delta, …}
--   (deltas as integers or their text; a zero is skipped). All of them are read and written
--   back by one HSET: one command in the AOF, where an HINCRBY each was one per field (every
--   write is fsynced). Lua's numbers are doubles, exact to 2^53: when a value read or a sum
--   would leave that range, the deltas go through HINCRBY instead, which is exact to 2^63 and
--   refuses an overflow, as before.
local COUNTS_EXACT = 9007199254740991
local function add_counts(hash, changes)
  local fields, deltas, given = {}, {}, {}
  for i = 1, #changes, 2 do
    local d = tonumber(changes[i + 1])
    if d ~= 0 then
      fields[#fields + 1] = changes[i]
      deltas[#deltas + 1] = d
      -- As given when text: a delta past 2^53 reaches HINCRBY exactly.
      given[#given + 1] = type(changes[i + 1]) == 'string' and changes[i + 1] or string.format('%d', d)
    end
  end
  if #fields == 0 then return end
  local cur = redis.call('HMGET', hash, unpack(fields))
  local set = {}
  for i, field in ipairs(fields) do
    local was = tonumber(cur[i]) or 0
    local now = was + deltas[i]
    if math.abs(was) > COUNTS_EXACT or math.abs(deltas[i]) > COUNTS_EXACT or math.abs(now) > COUNTS_EXACT then
      for j, f in ipairs(fields) do redis.call('HINCRBY', hash, f, given[j]) end
      return
    end
    set[#set + 1] = field
    set[#set + 1] = string.format('%d', now)
  end
  redis.call('HSET', hash, unpack(set))
end
