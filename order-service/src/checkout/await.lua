-- A checkout whose Pix waits for its payer: the order becomes awaiting_payment (with its charge
-- and code), its key stores the 202 that answers every retry until the order ends (settle.lua's
-- finish replaces a stored 202), and recovery's set holds it until the Pix expires, in one step.
-- A wake-up (wake.lua) or the expiry brings it back to a runner, which asks payment.
-- KEYS: order, steps, totals, key record, active, the shard's outbox.
-- ARGV: the change (change_from, 6), finish's arguments (settle_from, 7), when it expires (ms,
-- on the clock of the services, as every order's timestamps), then field/value pairs.
local order, steps, totals, key, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local r = update_order(order, steps, totals, KEYS[6], change_from(ARGV), ARGV, 15)
if r == 'ok' then
  local s = settle_from(ARGV, 7)
  settle_key(key, order, 'finish', s)
  redis.call('ZADD', active, ARGV[14], s.token)
end
return r
