-- A key's record, as every script reads it. It is a hash while it can change (running, or a
-- 202 its owner replaces). A record an effect's script writes done at once, for a key it took
-- itself (answer.lua), never changes again: it is one string of its fields, set with its expiry
-- by one command (SET … PX), where a hash took an HSET and a PEXPIRE, each with the key's name,
-- into the fsynced AOF. Its fields are "name\nvalue" pairs joined by "\n" (none of their
-- values, a status, a content type, an id, a fingerprint, holds a newline), and its state,
-- always done, is not written.
--
-- record_get(key, names): the record's fields `names` (a table), as HMGET returns them (false
--   for a missing one), whichever way the record is kept. A string is found by HMGET's
--   WRONGTYPE (no TYPE call on every read): each read of one, a replay, counts one error in
--   INFO errorstats.
-- record_packable(set): whether field/value pairs `set` can be kept as a string.
-- record_write_done(key, set, ttl_ms): writes a new, done record of field/value pairs `set`
--   (without 'state') as a string, with its expiry.
local function record_get(key, names)
  local fields = redis.pcall('HMGET', key, unpack(names))
  if not fields.err then return fields end
  local packed = redis.call('GET', key)
  local found = {state = 'done'}
  local name
  for part in string.gmatch(packed .. '\n', '([^\n]*)\n') do
    if name then found[name] = part; name = nil else name = part end
  end
  local out = {}
  for i, n in ipairs(names) do out[i] = found[n] or false end
  return out
end
local function record_packable(set)
  for _, v in ipairs(set) do
    if string.find(v, '\n', 1, true) then return false end
  end
  return true
end
local function record_write_done(key, set, ttl_ms)
  redis.call('SET', key, table.concat(set, '\n'), 'PX', ttl_ms)
end
