-- Creates a split: appended to its item's history, with its split.created event, in one step.
-- The history is what a charge reads to find the split in effect (the latest effectiveFrom not
-- after the charge; ties to the later one), so it is capped: a charge reads it whole.
-- KEYS: the item's splits (a list, oldest first), the split's events, the shard's aggregates.
-- ARGV: the split (JSON), splitId, the event (JSON), the most splits an item keeps.
local splits, events, aggregates = unpack(KEYS, 1, 3)
local split, split_id, event, most = unpack(ARGV, 1, 4)
if redis.call('LLEN', splits) >= tonumber(most) then return -1 end
local n = redis.call('RPUSH', splits, split)
append_event(events, aggregates, split_id, event)
return n
