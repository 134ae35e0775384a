-- Create or restock: sets name, price, currency and available; reserved and sold are kept.
-- With mode 'absent_only' it only creates (the demo seed never overwrites an item).
-- KEYS: item. ARGV: name, price, currency, available, mode ('upsert' or 'absent_only').
local item = KEYS[1]
local name, price, currency, available, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local exists = redis.call('EXISTS', item) == 1
if exists and mode == 'absent_only' then return 0 end
redis.call('HSET', item, 'name', name, 'price', price, 'currency', currency, 'available', available)
if not exists then redis.call('HSET', item, 'reserved', 0, 'sold', 0) end
return 1
