-- Stores a key's final answer (settle.lua).
-- KEYS: the key's record. ARGV: finish's arguments (settle_from).
local s = settle_from(ARGV, 1)
return finish(KEYS[1], s.token, s.fp, s.status, s.ctype, s.body, s.location, s.ttl_ms)
