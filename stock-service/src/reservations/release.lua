-- Release: reserved → released (units back to available). Released, expired: already done.
-- Completed: refused (transition.lua answers 'completed'). A reservation past its expiry is
-- recorded as expired, not released. Answers 'released', 'completed' or 'not_found', or a
-- key's refusal. KEYS and ARGV: as transition.lua says.
local item, reservation, expiring, rid = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
return transition(function(r)
  if r.status == 'reserved' then
    move(item, 'reserved', 'available', r.quantity)
    record_set(reservation, {'status', r.lapsed and 'expired' or 'released'})
    redis.call('ZREM', expiring, rid)
  end
  return 'released'
end, 'released')
