-- Settling a key's record (needs record.lua).
--
-- finish(key, token, fp, status, ctype, body, location, ttl_ms): stores the final response
--   unless another owner already did. A stored 202 is not final (a checkout awaiting an
--   asynchronous payment replays it until the order ends): its owner replaces it. A vanished record (expired, or lost with a Redis restart)
--   is written again whole, so the answer is still replayed. Only what changes is written
--   (every write is fsynced and lands in the AOF; a string record's change is appended, see
--   record.lua): a running record keeps its fingerprint, token and expiry, and its stale lease
--   and note, which no reader of a done record uses. An empty
--   `ctype` (application/json, what most answers are) is not written: a missing one reads as
--   that. Only a 202 is ever replaced, and it is JSON, so no other content type is left behind.
-- free(key, token): frees the key, only for its owner and only while running (or holding a 202).
local function finish(key, token, fp, status, ctype, body, location, ttl_ms)
  local rec = record_get(key, {'state', 'token', 'status'})
  if rec[1] == 'done' and rec[3] ~= '202' then return 0 end
  if rec[2] and rec[2] ~= token then return 0 end
  local set = {'state', 'done', 'status', status, 'body', body}
  if ctype ~= '' then set[#set + 1] = 'ctype'; set[#set + 1] = ctype end
  -- A replaced 202's Location is overwritten with nothing (read as none).
  if location ~= '' or rec[1] == 'done' then set[#set + 1] = 'location'; set[#set + 1] = location end
  if rec[1] then
    record_set(key, set)
    return 1
  end
  set[#set + 1] = 'fp'; set[#set + 1] = fp
  set[#set + 1] = 'token'; set[#set + 1] = token
  record_write(key, set, ttl_ms)
  return 1
end
local function free(key, token)
  local rec = record_get(key, {'state', 'token', 'status'})
  if (rec[1] == 'running' or rec[3] == '202') and rec[2] == token then return redis.call('DEL', key) end
  return 0
end
-- settle_from(argv, first): finish's arguments, as IdempotencyStore::finish_args passes them
--   from ARGV[first] on, by name: token, fp, status, ctype, body, location, ttl_ms.
local function settle_from(argv, first)
  return {
    token = argv[first], fp = argv[first + 1], status = argv[first + 2], ctype = argv[first + 3],
    body = argv[first + 4], location = argv[first + 5], ttl_ms = argv[first + 6],
  }
end
