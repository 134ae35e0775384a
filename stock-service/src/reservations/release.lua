-- Release: reserved → released (units back to available). Released, expired: already done.
-- Completed: refused. A reservation past its expiry is recorded as expired, not released.
-- Answers 'released', 'completed' or 'not_found', or a key's refusal (transition.lua).
-- KEYS: item, reservation, expiring[, answer or key]. ARGV: reservationId[, the answer].
local item, reservation, expiring = KEYS[1], KEYS[2], KEYS[3]
local rid = ARGV[1]
return transition(function()
  local r = reservation_of(reservation)
  if not r then return 'not_found' end
  if r.status == 'completed' then return 'completed' end
  if r.status == 'reserved' then
    redis.call('HINCRBY', item, 'available', r.quantity)
    redis.call('HINCRBY', item, 'reserved', -r.quantity)
    if r.lapsed then
      redis.call('HSET', reservation, 'status', 'expired')
    else
      redis.call('HSET', reservation, 'status', 'released')
    end
    redis.call('ZREM', expiring, rid)
  end
  return 'released'
end, 'released')
