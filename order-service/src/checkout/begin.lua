-- Takes the checkout's Idempotency-Key and, when it is new, creates its order in the same step:
-- the key's record shares the order's slot, so no crash can leave one without the other.
-- A new key's record is a pointer to its order (order.lua: hold_pointer), which holds the
-- fingerprint, the lease and the answer; a retry reads them there (pointer_begin). A replay of
-- a completed order names the order as a sixth element, for the caller to render its 200
-- (OrderStore::final_response).
-- Keys taken before #29's seventh pass, and keys holding a 202, are hash records: the shared
-- begin decides, and a replay whose stored body is empty answers with its order's
-- (update_and_settle.lua kept the body there alone) or, for a completed order, which stores
-- none, names the order as above.
-- On one node it first takes the caller's rate limit (ratelimit::Deferred: gcra.lua's
-- take_rate, one round trip fewer than the middleware's own), and a request over it does
-- nothing else. It then answers {decision or false when refused, take_rate's answer}.
-- KEYS: key record, order, steps, active, and the caller's TAT when it takes the limit.
-- ARGV: the new order (new_order_from), the key's ttl (ms), then the limit's interval and burst
-- when it takes it.
local key, order, steps, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function decide()
  local o = new_order_from(ARGV)
  local ttl_ms = ARGV[11]
  local held, kind = key_pointer(key)
  if held then
    local decision = pointer_begin(active, string.match(order, '^(.*:order:)'), held, o.fp)
    if decision then return decision end
    -- Its order is gone (dropped as never begun): the key is taken afresh.
    kind = 'none'
  end
  if kind == 'none' then
    create_order(order, active, o)
    hold_pointer(key, o.id, ttl_ms)
    return {'new', o.id}
  end
  local decision = begin(key, o.fp, o.id, tonumber(o.lease_ms), ttl_ms)
  if decision[1] == 'replay' and decision[4] == '' then
    local token = record_get(key, {'token'})[1]
    if token then
      decision[4] = redis.call('HGET', string.match(order, '^(.*:order:)') .. token, 'respBody') or ''
      -- None there either: a completed order's 200, which Rust renders from the order (named last).
      if decision[4] == '' then decision[6] = token end
    end
  end
  return decision
end
if KEYS[5] then
  local limit = take_rate(KEYS[5], ARGV[12], ARGV[13])
  if limit[1] == 0 then return {false, limit} end
  return {decide(), limit}
end
return decide()
