-- Creates a split: appended to its item's history, with its split.created event, in one step.
-- The history is what a charge reads to find the split in effect (the latest effectiveFrom not
-- after the charge; ties to the later one), so it is capped: a charge reads it whole.
-- The item joins its shard's items with splits, which replicas cache so that a charge of an
-- item without one needs no read (known.rs).
-- KEYS: the item's splits (a list, oldest first), the split's events, the shard's aggregates,
--   the shard's items with splits.
-- ARGV: the split (JSON), splitId, the event (JSON), the most splits an item keeps, itemId.
local splits, events, aggregates, items = unpack(KEYS, 1, 4)
local split, split_id, event, most, item = unpack(ARGV, 1, 5)
if redis.call('LLEN', splits) >= tonumber(most) then return -1 end
local n = redis.call('RPUSH', splits, split)
append_event(events, aggregates, split_id, event)
redis.call('SADD', items, item)
return n
