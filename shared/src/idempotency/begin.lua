-- Deciding what a request does with its Idempotency-Key, on Redis' clock (needs clock.lua and
-- record.lua).
-- The record's fields: state, fp, token, lease (ms), status, ctype, body, location.
--
-- hold(key, fp, token, lease_at, ttl_ms, note): writes the record as running under `token`,
--   with `note` when given (begin_noted.lua): one string with its expiry (record.lua).
-- begin(key, fp, token, lease_ms, ttl_ms, defer): new / replay / busy / reused / resume.
--   With `defer`, a new key's record is not written: the caller writes it once it knows
--   whether the work succeeded (answer.lua).
local function hold(key, fp, token, lease_at, ttl_ms, note)
  local set = {'state', 'running', 'fp', fp, 'token', token, 'lease', string.format('%d', lease_at)}
  if note then set[9] = 'note'; set[10] = note end
  record_write(key, set, ttl_ms)
end
local function begin(key, fp, token, lease_ms, ttl_ms, defer)
  local now = now_ms()
  local rec = record_get(key, {'state', 'fp', 'lease', 'token', 'status', 'ctype', 'body', 'location'})
  if not rec[1] then
    if not defer then hold(key, fp, token, now + lease_ms, ttl_ms) end
    return {'new', token}
  end
  -- As stored (IdempotencyStore's stored_fp): a record written before fingerprints were cut
  -- to STORED_FP_LEN (16) characters, or to 32 before that, still matches its request.
  if string.sub(rec[2] or '', 1, 16) ~= string.sub(fp, 1, 16) then return {'reused'} end
  if rec[1] == 'done' then return {'replay', rec[5], rec[6], rec[7], rec[8] or ''} end
  local lease = tonumber(rec[3]) or 0
  if lease > now then return {'busy', tostring(lease - now)} end
  record_set(key, {'lease', string.format('%d', now + lease_ms)})
  return {'resume', rec[4]}
end
