-- Replaces the note of a running record, only for its owner (begin_noted.lua).
-- KEYS: the key's record. ARGV: token, note.
local rec = record_get(KEYS[1], {'state', 'token'})
if rec[1] ~= 'running' or rec[2] ~= ARGV[1] then return 0 end
record_set(KEYS[1], {'note', ARGV[2]})
return 1
