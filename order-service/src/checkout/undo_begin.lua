-- Takes back begin.lua for a request that got no answer from it: frees the key if it was taken
-- for this request's order, and abandons that order. 'undone' when the key is not held for
-- this request (any more); 'held' when another request's order holds it.
-- KEYS: key record, order, steps, active. ARGV: the request's order id.
local key, id = KEYS[1], ARGV[1]
local pointed, kind = key_pointer(key)
local holder = pointed
if not pointed and kind ~= 'none' then holder = record_get(key, {'token'})[1] end
if holder and holder ~= id then return 'held' end
if pointed then redis.call('DEL', key) else free(key, id) end
abandon_order(KEYS[2], KEYS[3], KEYS[4], id)
return 'undone'
