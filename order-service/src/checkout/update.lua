-- Records one saga event (update_order): 'ok', 'missing', 'terminal' or 'fenced'.
-- KEYS: order, steps, totals, the shard's outbox. ARGV: the change (change_from), then field/value pairs.
local r = update_order(KEYS[1], KEYS[2], KEYS[3], KEYS[4], change_from(ARGV), ARGV, 7)
return r
