-- Decides what a request does with its key (begin.lua).
-- KEYS: the key's record. ARGV: fingerprint, the request's token, lease (ms), ttl (ms).
local fp, token, lease_ms, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
return begin(KEYS[1], fp, token, lease_ms, ttl_ms)
