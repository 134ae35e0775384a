-- Complete: reserved → completed (units from reserved to sold), unless it has expired, in which
-- case the expiry is applied now and the completion refused ('released'). Completed already:
-- done again (transition.lua answers 'completed'). Answers 'completed', 'released' or
-- 'not_found', or a key's refusal. KEYS and ARGV: as transition.lua says.
local item, reservation, expiring, rid = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
return transition(function(r)
  if r.status ~= 'reserved' then return 'released' end
  redis.call('ZREM', expiring, rid)
  if r.lapsed then
    move(item, 'reserved', 'available', r.quantity)
    record_set(reservation, {'status', 'expired'})
    return 'released'
  end
  move(item, 'reserved', 'sold', r.quantity)
  record_set(reservation, {'status', 'completed'})
  return 'completed'
end, 'completed')
