-- Decides what a request does with its key, as begin_key.lua, and keeps a note beside the
-- running record: how far the execution got, for whoever takes the key over (a provider the
-- request may have reached, say). A new key gets the given note; a key taken over keeps the
-- note an earlier owner left and says so ('1'), or gets the given one ('0').
-- KEYS: the key's record. ARGV: fingerprint, token, lease (ms), ttl (ms), note.
local fp, token, lease_ms, ttl_ms, note = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
-- A new key's record is written once, with its note (begin defers it).
local r = begin(KEYS[1], fp, token, lease_ms, ttl_ms, true)
if r[1] == 'new' then
  hold(KEYS[1], fp, token, now_ms() + lease_ms, ttl_ms, note)
  return {'new', r[2], note, '0'}
end
if r[1] == 'resume' then
  local left = record_get(KEYS[1], {'note'})[1]
  if left and left ~= '' then return {'resume', r[2], left, '1'} end
  record_set(KEYS[1], {'note', note})
  return {'resume', r[2], note, '0'}
end
return r
