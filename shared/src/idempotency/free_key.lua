-- Frees a running key for its owner (settle.lua).
-- KEYS: the key's record. ARGV: token.
return free(KEYS[1], ARGV[1])
