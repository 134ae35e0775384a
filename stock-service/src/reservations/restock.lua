-- Restock: completed → restocked, the units going from sold back to available (an order
-- refunded with its goods returned). Restocked already: done again. Idempotent by state, so the
-- order's refund can send it as often as it needs; the Idempotency-Key adds replays on top.
-- KEYS: item, reservation. Answers 'restocked', 'not_completed' or 'not_found'.
local item, reservation = KEYS[1], KEYS[2]
local r = record_get(reservation, {'status', 'quantity'})
if not r[1] then return 'not_found' end
if r[1] == 'restocked' then return 'restocked' end
if r[1] ~= 'completed' then return 'not_completed' end
local q = tonumber(r[2])
move(item, 'sold', 'available', q)
record_set(reservation, {'status', 'restocked'})
return 'restocked'
