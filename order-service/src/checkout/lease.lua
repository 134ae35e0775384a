-- Extends the owner's lease, or sets when recovery should look again; 0 when the order is not
-- this owner's (or no longer active).
-- KEYS: order, active. ARGV: order id, owner, ms from now.
local order, active = KEYS[1], KEYS[2]
local id, owner, from_now_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HGET', order, 'owner') ~= owner then return 0 end
if not redis.call('ZSCORE', active, id) then return 0 end
redis.call('ZADD', active, now_ms() + from_now_ms, id)
return 1
