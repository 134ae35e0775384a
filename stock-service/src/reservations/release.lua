-- Release: reserved → released (units back to available). Released, expired: already done.
-- Completed: refused. A reservation past its expiry is recorded as expired, not released.
-- Answers 'released', 'completed' or 'not_found'; on 'released' stores the request's answer
-- when given one, so the Idempotency-Key's record needs no second write. Told to take the key
-- first, it answers a replay, busy or reused key with {'idem', ...} instead.
-- KEYS: item, reservation, expiring[, answer or key]. ARGV: reservationId[, the answer].
local item, reservation, expiring, answer_at = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local ans = answer_from(ARGV, 2)
local refused = take_key(answer_at, ans)
if refused then return refused end
local function release()
  local now = now_ms()
  local r = redis.call('HMGET', reservation, 'status', 'quantity', 'expiresAt')
  if not r[1] then return 'not_found' end
  if r[1] == 'completed' then return 'completed' end
  if r[1] == 'reserved' then
    local q = tonumber(r[2])
    redis.call('HINCRBY', item, 'available', q)
    redis.call('HINCRBY', item, 'reserved', -q)
    if tonumber(r[3]) <= now then
      redis.call('HSET', reservation, 'status', 'expired')
    else
      redis.call('HSET', reservation, 'status', 'released')
    end
    redis.call('ZREM', expiring, rid)
  end
  return 'released'
end
local out = release()
if out == 'released' and ans then store_answer(answer_at, ans) end
hold_key()
return out
