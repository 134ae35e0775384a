-- Stores a key's final answer (settle.lua).
-- KEYS: the key's record. ARGV: token, fingerprint, status, content type, body, location, ttl (ms).
local token, fp, status, ctype, body, location, ttl_ms = unpack(ARGV)
return finish(KEYS[1], token, fp, status, ctype, body, location, ttl_ms)
