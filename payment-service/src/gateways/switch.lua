-- The manual switch of one provider, persisted with its gateway.switched event in one step.
-- KEYS: the switches (hash name → 1|0), the provider's events, the aggregates of the switches'
-- slot. ARGV: name, '1' or '0', the event (JSON).
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return append_event(KEYS[2], KEYS[3], 'gw_' .. ARGV[1], ARGV[3])
