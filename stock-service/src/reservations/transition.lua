-- What release.lua and complete.lua share (needs answer.lua and stock.lua). Both are idempotent by state, and
-- the Idempotency-Key adds byte-identical replays and payload-reuse detection on top. Both run
-- on KEYS: item, reservation, expiring[, answer or key]; ARGV: reservationId[, the answer].
--
-- transition(apply, succeeds_with): told to take the key first (KEYS[4] and an answer from
--   ARGV[2] on), answers a replay, busy or reused key with {'idem', ...} instead of applying.
--   Else reads the reservation: 'not_found' without one, 'completed' for a completed one (done
--   again for complete, refused for release); otherwise `apply(r)` decides, `r` holding its
--   status, quantity and whether it has lapsed (expiresAt is past). When the answer is
--   `succeeds_with`, stores the request's answer when given one, so the Idempotency-Key's record
--   needs no second write.
local function transition(apply, succeeds_with)
  local answer_at = KEYS[4]
  local ans = answer_from(ARGV, 2)
  local refused = take_key(answer_at, ans)
  if refused then return refused end
  local out
  local r = record_get(KEYS[2], {'status', 'quantity', 'expiresAt'})
  if not r[1] then
    out = 'not_found'
  elseif r[1] == 'completed' or r[1] == 'restocked' then
    -- A restocked reservation was completed first: it answers as one.
    out = 'completed'
  else
    local expires = tonumber(r[3])
    out = apply({status = r[1], quantity = tonumber(r[2]), lapsed = expires ~= nil and expires <= now_ms()})
  end
  if out == succeeds_with and ans then store_answer(answer_at, ans) end
  hold_key()
  return out
end
