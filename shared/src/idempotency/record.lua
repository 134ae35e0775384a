-- A key's record, as every script reads and writes it. It is one string of its fields, set
-- with its expiry by one command (SET … PX), where a hash took an HSET and a PEXPIRE, each with
-- the key's name, into the fsynced AOF. Its fields are "name\nvalue" pairs joined by "\n", a
-- name written as its letter (record_letter; none of their values, a state, a fingerprint, a
-- token, a lease, a status, a content type, an id, holds a newline). A record written done at
-- once does not write its state: a string without one is done. A change to a string record is
-- APPENDed ("\nname\nvalue…"): a later pair wins over an earlier one of the same name, and the
-- expiry stays. Records written before #29's eighth pass, and one given a value with a
-- newline (a body), are hashes, read and changed as such.
--
-- record_get(key, names, hashes_first): the record's fields `names` (a table), as HMGET
--   returns them (false for a missing one), whichever way the record is kept. GET is tried
--   first, and a hash is found by its WRONGTYPE (no TYPE call on every read; each such read
--   counts one error in INFO errorstats, and a failed call inside a script costs more than a
--   second command). With `hashes_first`, for a place that is mostly a hash (an answer stored
--   beside its effect), the other way round.
-- record_packable(set): whether field/value pairs `set` can be kept as a string.
-- record_write_done(key, set, ttl_ms): writes a new, done record of field/value pairs `set`
--   (without 'state') as a string, with its expiry.
-- record_write(key, set, ttl_ms): writes a new record of field/value pairs `set` (with its
--   'state') as a string, with its expiry; a hash when a value holds a newline.
-- record_set(key, set): sets fields of an existing record, whichever way it is kept. A string
--   given a value with a newline becomes a hash of all its fields, its expiry kept.
-- How record_get found a key kept, for record_set: 'string', or 'hash' when it answered
-- HMGET (nil: not read yet in this script).
local record_kind = {}
-- A string record names its fields by letters (since #29's eleventh pass; a hash keeps the
-- names): its names were a quarter to a half of a record's bytes. Read, a letter is its name
-- again, and a name written in full by an older version reads as itself. No letter is a name.
-- Chains of comparisons, not tables: a table here would be per-call state (shared::lua sets
-- such a `local` again on every call), and two tables of fourteen cost each script more than
-- its lookups do.
local function record_letter(name)
  if name == 'status' then return 's' elseif name == 'made' then return 'm'
  elseif name == 'fp' then return 'f' elseif name == 'state' then return 'e'
  elseif name == 'token' then return 't' elseif name == 'lease' then return 'l'
  elseif name == 'note' then return 'n' elseif name == 'body' then return 'b'
  elseif name == 'ctype' then return 'c' elseif name == 'location' then return 'L'
  elseif name == 'quantity' then return 'q' elseif name == 'totalFee' then return 'p'
  elseif name == 'currency' then return 'u' elseif name == 'expiresAt' then return 'x' end
  return name
end
local function record_name(l)
  if l == 's' then return 'status' elseif l == 'm' then return 'made'
  elseif l == 'f' then return 'fp' elseif l == 'e' then return 'state'
  elseif l == 't' then return 'token' elseif l == 'l' then return 'lease'
  elseif l == 'n' then return 'note' elseif l == 'b' then return 'body'
  elseif l == 'c' then return 'ctype' elseif l == 'L' then return 'location'
  elseif l == 'q' then return 'quantity' elseif l == 'p' then return 'totalFee'
  elseif l == 'u' then return 'currency' elseif l == 'x' then return 'expiresAt' end
  return l
end
-- Field/value pairs `set` as a string record writes them: "l1\nvalue\nl2\nvalue…". Its
-- names become letters in place (no second table): `set` is written once, then dropped.
local function record_pack(set)
  for i = 1, #set, 2 do set[i] = record_letter(set[i]) end
  return table.concat(set, '\n')
end
-- A string record's fields: each name's last value (a missing state is done), and the names
-- in the order they first came.
local function record_unpack(packed)
  local found, order = {}, {}
  local name
  for part in string.gmatch(packed .. '\n', '([^\n]*)\n') do
    if name then
      if found[name] == nil then order[#order + 1] = name end
      found[name] = part; name = nil
    else
      name = record_name(part)
    end
  end
  if not found.state then found.state = 'done'; order[#order + 1] = 'state' end
  return found, order
end
local function record_get(key, names, hashes_first)
  local packed
  if not hashes_first then packed = redis.pcall('GET', key) end
  if hashes_first or type(packed) == 'table' then
    local fields = redis.pcall('HMGET', key, unpack(names))
    if not fields.err then
      record_kind[key] = 'hash'
      return fields
    end
    packed = redis.call('GET', key)
  end
  local out = {}
  if not packed then
    for i = 1, #names do out[i] = false end
    return out
  end
  record_kind[key] = 'string'
  local found = record_unpack(packed)
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
  redis.call('SET', key, record_pack(set), 'PX', ttl_ms)
  record_kind[key] = 'string'
end
local function record_write(key, set, ttl_ms)
  if record_packable(set) then return record_write_done(key, set, ttl_ms) end
  redis.call('HSET', key, unpack(set))
  redis.call('PEXPIRE', key, ttl_ms)
  record_kind[key] = 'hash'
end
local function record_set(key, set)
  local kind = record_kind[key] or redis.call('TYPE', key)['ok']
  if kind ~= 'string' then return redis.call('HSET', key, unpack(set)) end
  if record_packable(set) then return redis.call('APPEND', key, '\n' .. record_pack(set)) end
  local ttl = redis.call('PTTL', key)
  local found, order = record_unpack(redis.call('GET', key))
  local all = {}
  for _, name in ipairs(order) do all[#all + 1] = name; all[#all + 1] = found[name] end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(all))
  redis.call('HSET', key, unpack(set))
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  record_kind[key] = 'hash'
end
