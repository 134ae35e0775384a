-- Complete: reserved → completed (units from reserved to sold), unless it has expired, in which
-- case the expiry is applied now and the completion refused ('released').
-- Answers 'completed', 'released' or 'not_found', or a key's refusal (transition.lua).
-- KEYS: item, reservation, expiring[, answer or key]. ARGV: reservationId[, the answer].
local item, reservation, expiring = KEYS[1], KEYS[2], KEYS[3]
local rid = ARGV[1]
return transition(function()
  local r = reservation_of(reservation)
  if not r then return 'not_found' end
  if r.status == 'completed' then return 'completed' end
  if r.status ~= 'reserved' then return 'released' end
  redis.call('ZREM', expiring, rid)
  if r.lapsed then
    redis.call('HINCRBY', item, 'available', r.quantity)
    redis.call('HINCRBY', item, 'reserved', -r.quantity)
    redis.call('HSET', reservation, 'status', 'expired')
    return 'released'
  end
  redis.call('HINCRBY', item, 'reserved', -r.quantity)
  redis.call('HINCRBY', item, 'sold', r.quantity)
  redis.call('HSET', reservation, 'status', 'completed')
  return 'completed'
end, 'completed')
