-- Create or restock: sets name, price, currency and available; reserved and sold are kept.
-- With mode 'absent_only' it only creates (the demo seed never overwrites an item).
-- Ownership is checked here, in the same step as the write, so an item cannot change hands
-- between a check and the write: an account (`acting` non-empty) may create an item, which is
-- then its own, or change an item it owns; not an item of another account or of the platform
-- (-1). The platform (`acting` empty) may change any item and set its owner.
-- KEYS: item. ARGV: name, price, currency, available, mode ('upsert' or 'absent_only'),
--   owner to set ('' = keep), acting account ('' = the platform).
local item = KEYS[1]
local name, price, currency, available, mode, owner, acting = unpack(ARGV, 1, 7)
local exists = redis.call('EXISTS', item) == 1
if exists and mode == 'absent_only' then return 0 end
if acting ~= '' then
  if exists and redis.call('HGET', item, 'ownerId') ~= acting then return -1 end
  owner = acting
end
redis.call('HSET', item, 'name', name, 'price', price, 'currency', currency, 'available', available)
if owner ~= '' then redis.call('HSET', item, 'ownerId', owner) end
if not exists then redis.call('HSET', item, 'reserved', 0, 'sold', 0) end
return 1
