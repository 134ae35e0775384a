-- Reserve: one script so that concurrent reserves can never both pass the availability check.
-- Takes the request's key when told to (a replay, busy or reused key is answered
-- {'idem', ...} at once), then either returns the reservation this Idempotency-Key
-- already made ('found'), or moves units from available to reserved, creates the reservation
-- ('reserved'), and stores the request's answer (its template filled) when given one. It
-- sweeps the item's lapsed reservations first only when the item cannot cover the request
-- without their units: otherwise the sweeper (expiry.rs) returns them within its interval, and
-- the checkout's reserve saves a ZRANGEBYSCORE and its loop. No request is refused for units a
-- lapsed reservation still holds. A key
-- taken here and settled with the answer is written once, as done, and keeps no body: its
-- replay is the template filled in again from the reservation.
-- What the key made is named by the answer's record (answer.lua's `made`), one write less than
-- a marker of its own; the marker is written and read only for a request without an answer.
-- (Older versions wrote both in one script: a marker they left has an answer beside it, which
-- is replayed before this script runs.)
-- KEYS: item, expiring, marker[, answer or key].
-- ARGV: reservation key prefix, quantity, new reservationId, reservation TTL (ms), marker TTL
--   (ms)[, the answer (answer_from), its body a template].
local item, expiring, marker, answer_at = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, quantity, rid, ttl_ms, marker_ttl_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local ans = answer_from(ARGV, 6)
-- A replay of the key's record, which keeps no body on one node: the template filled in from
-- the reservation the key made, as when it was made (its status then: reserved).
local function render(made)
  if not made then return nil end
  local r = record_get(prefix .. made, {'totalFee', 'currency', 'expiresAt'})
  if not r[1] then return nil end
  return fill(ans.body, {made, r[1], r[2], rfc3339_ms(tonumber(r[3]))})
end
local refused = take_key(answer_at, ans, render)
if refused then return refused end
local function reserve()
  local now = now_ms()
  local prev
  if ans then prev = made_by(answer_at, ans) else prev = redis.call('GET', marker) end
  if prev then
    local r = record_get(prefix .. prev, {'quantity', 'totalFee', 'currency', 'expiresAt'})
    if r[1] then return {'found', prev, r[1], r[2], r[3], r[4]} end
  end
  local it = redis.call('HMGET', item, 'available', 'price', 'currency', 'reserved')
  if not it[1] then return {'not_found'} end
  local avail = tonumber(it[1])
  if avail < quantity and sweep(item, expiring, prefix, now, 100) > 0 then
    it = redis.call('HMGET', item, 'available', 'price', 'currency', 'reserved')
    avail = tonumber(it[1])
  end
  if avail < quantity then return {'out_of_stock', fmt(avail)} end
  -- Both counts were just read: one HSET writes them (one command in the AOF, not two).
  redis.call('HSET', item, 'available', fmt(avail - quantity), 'reserved', fmt((tonumber(it[4]) or 0) + quantity))
  local total = fmt(tonumber(it[2]) * quantity)
  local expires = fmt(now + ttl_ms)
  local rk = prefix .. rid
  record_write(rk, {'quantity', fmt(quantity), 'totalFee', total, 'currency', it[3], 'status', 'reserved',
    'expiresAt', expires}, ttl_ms + tonumber(marker_ttl_ms))
  redis.call('ZADD', expiring, expires, rid)
  if ans then
    -- A key this script took keeps no body (answer.lua): its replay fills the template again
    -- (render). Only an answer stored beside the reservation (a cluster) is filled in here.
    local body = not ans.token and fill(ans.body, {rid, total, it[3], rfc3339_ms(tonumber(expires))}) or nil
    store_answer(answer_at, ans, body, rid)
  else
    redis.call('SET', marker, rid, 'PX', marker_ttl_ms)
  end
  return {'reserved', rid, fmt(quantity), total, it[3], expires}
end
local out = reserve()
hold_key()
return out
