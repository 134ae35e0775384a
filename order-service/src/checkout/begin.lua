-- Takes the checkout's Idempotency-Key and, when it is new, creates its order in the same step:
-- the key's record shares the order's slot, so no crash can leave one without the other.
-- A replay whose stored body is empty answers with its order's (update_and_settle.lua keeps
-- the body there alone), or, for a completed order, which stores none, names the order as a
-- sixth element for the caller to render its 200 (OrderStore::final_response); the order (the
-- key's token) shares the key's slot.
-- KEYS: key record, order, steps, totals, active. ARGV: the new order (new_order_from), the
-- key's ttl (ms).
local key, order, steps, totals, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local o = new_order_from(ARGV)
local ttl_ms = ARGV[11]
local decision = begin(key, o.fp, o.id, tonumber(o.lease_ms), ttl_ms)
if decision[1] == 'new' then create_order(order, steps, totals, active, o) end
if decision[1] == 'replay' and decision[4] == '' then
  local token = record_get(key, {'token'})[1]
  if token then
    decision[4] = redis.call('HGET', string.match(order, '^(.*:order:)') .. token, 'respBody') or ''
    -- None there either: a completed order's 200, which Rust renders from the order (named last).
    if decision[4] == '' then decision[6] = token end
  end
end
return decision
