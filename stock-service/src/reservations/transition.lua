-- What release.lua and complete.lua share (needs answer.lua). Both are idempotent by state, and
-- the Idempotency-Key adds byte-identical replays and payload-reuse detection on top.
--
-- transition(apply, succeeds_with): told to take the key first (KEYS[4] and an answer from
--   ARGV[2] on), answers a replay, busy or reused key with {'idem', ...} instead of applying;
--   else runs `apply()` and, when it answers `succeeds_with`, stores the request's answer when
--   given one, so the Idempotency-Key's record needs no second write.
-- reservation_of(reservation): its status, quantity and whether it has lapsed (expiresAt is
--   past); nil when there is no such reservation.
local function reservation_of(reservation)
  local r = redis.call('HMGET', reservation, 'status', 'quantity', 'expiresAt')
  if not r[1] then return nil end
  local expires = tonumber(r[3])
  return {status = r[1], quantity = tonumber(r[2]), lapsed = expires ~= nil and expires <= now_ms()}
end
local function transition(apply, succeeds_with)
  local answer_at = KEYS[4]
  local ans = answer_from(ARGV, 2)
  local refused = take_key(answer_at, ans)
  if refused then return refused end
  local out = apply()
  if out == succeeds_with and ans then store_answer(answer_at, ans) end
  hold_key()
  return out
end
