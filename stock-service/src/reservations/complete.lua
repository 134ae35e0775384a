-- Complete: reserved → completed (units from reserved to sold), unless it has expired, in which
-- case the expiry is applied now and the completion refused ('released').
-- Answers 'completed', 'released' or 'not_found'; on 'completed' stores the request's answer
-- when given one. Told to take the key first, it answers a replay, busy or reused key with
-- {'idem', ...} instead.
-- KEYS: item, reservation, expiring[, answer or key]. ARGV: reservationId[, the answer].
local item, reservation, expiring, answer_at = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local ans = answer_from(ARGV, 2)
local refused = take_key(answer_at, ans)
if refused then return refused end
local function complete()
  local now = now_ms()
  local r = redis.call('HMGET', reservation, 'status', 'quantity', 'expiresAt')
  if not r[1] then return 'not_found' end
  if r[1] == 'completed' then return 'completed' end
  if r[1] ~= 'reserved' then return 'released' end
  local q = tonumber(r[2])
  redis.call('ZREM', expiring, rid)
  if tonumber(r[3]) <= now then
    redis.call('HINCRBY', item, 'available', q)
    redis.call('HINCRBY', item, 'reserved', -q)
    redis.call('HSET', reservation, 'status', 'expired')
    return 'released'
  end
  redis.call('HINCRBY', item, 'reserved', -q)
  redis.call('HINCRBY', item, 'sold', q)
  redis.call('HSET', reservation, 'status', 'completed')
  return 'completed'
end
local out = complete()
if out == 'completed' and ans then store_answer(answer_at, ans) end
hold_key()
return out
