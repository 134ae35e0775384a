-- Records the order's end and, in the same step, settles its key and retires it from
-- recovery's set: one round trip for the checkout's last state change.
-- The key's record gets the answer's status and an empty body: the body is the order's
-- (respBody, among the field/value pairs), or for a completed order none at all, its 200 being
-- rendered from the order's fields; begin.lua finds either on a replay. The order outlives the
-- key, so the answer is never lost to this.
-- KEYS: order, steps, totals, key record, active, the shard's outbox.
-- ARGV: the change (change_from, 6), mode ('finish' or 'free'), finish's arguments
-- (settle_from, 7), then field/value pairs.
local order, steps, totals, key, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local r, owed, known = update_order(order, steps, totals, KEYS[6], change_from(ARGV), ARGV, 15)
if r == 'ok' then
  local s = settle_from(ARGV, 8)
  s.body = ''
  settle_checkout(key, active, order, ARGV[7], s, owed, known)
end
return r
