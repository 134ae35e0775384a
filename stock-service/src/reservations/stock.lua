-- What every stock script may call (needs clock.lua for its callers' `now_ms`, counts.lua and
-- shared's record.lua).
-- A reservation is kept as an Idempotency-Key's record is (record.lua): one string of its
-- fields, written with its expiry by one SET ... PX (a hash took an HSET and a PEXPIRE into
-- the fsynced AOF), its status changes appended; reservations made before #29's eighth pass
-- are hashes, read and changed as such (record_get, record_set).
-- fill(tpl, values): an answer template's holes ('\1') filled in turn (reservation_template).
-- sweep(item, expiring, prefix, now, limit): returns up to `limit` lapsed reservations of one
--   item to `available`, bounded so no script runs long; how many it looked at.
-- fmt(n): an integer as Redis stores it, never in Lua's exponent notation.
-- move(item, from, to, q): q units from one of the item's counts to another, both written by
--   one HSET (add_counts).
local function fmt(n) return string.format('%d', n) end
local function fill(tpl, values)
  local out, pos = {}, 1
  for _, v in ipairs(values) do
    local at = string.find(tpl, '\1', pos, true)
    table.insert(out, string.sub(tpl, pos, at - 1))
    table.insert(out, v)
    pos = at + 1
  end
  table.insert(out, string.sub(tpl, pos))
  return table.concat(out)
end
local function move(item, from, to, q)
  add_counts(item, {from, -q, to, q})
end
local function sweep(item, expiring, prefix, now, limit)
  local due = redis.call('ZRANGEBYSCORE', expiring, '-inf', now, 'LIMIT', 0, limit)
  for _, rid in ipairs(due) do
    local rk = prefix .. rid
    local r = record_get(rk, {'status', 'quantity'})
    if r[1] == 'reserved' then
      move(item, 'reserved', 'available', tonumber(r[2]))
      record_set(rk, {'status', 'expired'})
    end
    redis.call('ZREM', expiring, rid)
  end
  return #due
end
