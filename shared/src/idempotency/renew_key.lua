-- Extends the owner's lease while it is still working (needs clock.lua and record.lua).
-- KEYS: the key's record. ARGV: token, lease (ms).
local token, lease_ms = ARGV[1], tonumber(ARGV[2])
local rec = record_get(KEYS[1], {'state', 'token'})
if rec[1] ~= 'running' or rec[2] ~= token then return 0 end
record_set(KEYS[1], {'lease', string.format('%d', now_ms() + lease_ms)})
return 1
