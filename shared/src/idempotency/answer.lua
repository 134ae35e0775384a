-- Storing a request's answer with its effect, for the effect's script (needs begin.lua).
--
-- answer_from(argv, first): the answer's arguments, as Answer::add_to in Rust passes them from
--   ARGV[first] on, by name: fp, status, ctype, body, ttl_ms, and, when the script takes the key
--   itself, token and lease_ms; or, when it settles a key its request took before (on one node,
--   the key's record given instead of a place beside the effect), that owner's token and
--   'held' (read as `held`, the token). nil when there are none (the key has no place for an
--   answer).
-- take_key(key, ans, render), first: when the script takes the key (ans.token), decides it as
--   `begin` does. nil to go on (new, or taken over: the record gets this owner's token, so this
--   owner's settling counts), or {'idem', <begin's answer>} for the script to return as it is:
--   a replay, busy or reused. A new key's record is not written yet: the script is atomic, so
--   nobody can see the key untaken before it ends. A replay of a record that keeps no body
--   (below) answers the request's own ans.body, through `render(made)` when given (which fills
--   in what the key made; nil if that is gone: {'idem', 'lost'}).
-- store_answer(key, ans, body, made): settles the record with the answer (`body`, or ans.body),
--   writing a new key's record once, done, instead of running and then done (every write is
--   fsynced and lands in the AOF); or, beside the effect, writes the hash fp, status, ctype,
--   body and its expiry. The fingerprint is kept there so that a lookup replays only the answer
--   of the request it was stored for. A `held` key's record is settled as settle.lua's finish
--   does (left alone if already done, unless with a 202; written whole if it vanished).
--   A held record given an empty body keeps none: its caller renders the replay from `made`.
--   A record the script took itself keeps no body: it is only ever read by take_key, for a
--   request with the same fingerprint, which carries the same answer again (its holes filled by
--   `render` from what the key made), so the body would be bytes written for nothing; and it
--   is written as a string, with its expiry, in one command (record.lua).
-- hold_key(), last, on every way out after take_key: writes a new key's record as running
--   under this owner when no answer was stored, so the caller settles or frees it as usual.
-- An effect that must find what a request made (its retry after a crash) can name it in the
-- answer's record (`store_answer`'s `made`: field 'made') instead of a marker key of its own,
-- one write less per request: made_by(key, ans) reads it back (nil without an answer, and
-- for a key take_key has just taken new). For a `held` key it reads the record's state and
-- status with it, which store_answer then settles by without a second read: no script writes
-- the answer's record between the two.
local untaken
-- A held record's {state, status} as made_by read them, by key.
local held_read = {}
local function answer_from(argv, first)
  if not argv[first] then return nil end
  local a = {
    fp = argv[first], status = argv[first + 1], ctype = argv[first + 2], body = argv[first + 3],
    ttl_ms = argv[first + 4], token = argv[first + 5], lease_ms = argv[first + 6],
  }
  if a.lease_ms == 'held' then a.held, a.token, a.lease_ms = a.token, nil, nil end
  return a
end
local function take_key(key, ans, render)
  if not key or not ans or not ans.token then return nil end
  local d = begin(key, ans.fp, ans.token, tonumber(ans.lease_ms), ans.ttl_ms, true)
  if d[1] == 'replay' and not d[4] then
    d[4] = ans.body
    if render then d[4] = render(record_get(key, {'made'})[1]) end
    if not d[4] then return {'idem', 'lost'} end
  end
  if d[1] == 'new' then
    untaken = {key, ans.fp, ans.token, now_ms() + tonumber(ans.lease_ms), ans.ttl_ms}
    return nil
  end
  if d[1] == 'resume' then
    record_set(key, {'token', ans.token})
    return nil
  end
  table.insert(d, 1, 'idem')
  return d
end
local function hold_key()
  if untaken then hold(unpack(untaken)) end
  untaken = nil
end
local function store_answer(key, ans, body, made)
  -- An empty ctype (application/json) is not written, as settle.lua's finish does.
  local set = {'status', ans.status}
  body = body or ans.body
  -- A held record's empty body is left out: its caller renders the replay from `made`
  -- (Answer::rendered_on_replay), and a missing body reads as an empty one.
  if not ans.token and not (ans.held and body == '') then set[3] = 'body'; set[4] = body end
  if ans.ctype ~= '' then set[#set + 1] = 'ctype'; set[#set + 1] = ans.ctype end
  if made then set[#set + 1] = 'made'; set[#set + 1] = made end
  if ans.held then
    local rec = held_read[key] or record_get(key, {'state', 'status'})
    held_read[key] = nil
    if rec[1] == 'done' and rec[2] ~= '202' then return end
    set[#set + 1] = 'state'; set[#set + 1] = 'done'
    if rec[1] then return record_set(key, set) end
    set[#set + 1] = 'fp'; set[#set + 1] = ans.fp
    set[#set + 1] = 'token'; set[#set + 1] = ans.held
    redis.call('HSET', key, unpack(set))
    return redis.call('PEXPIRE', key, ans.ttl_ms)
  end
  if untaken then
    -- New and done at once: it never changes again, so it is kept as a string (record.lua).
    untaken = nil
    set[#set + 1] = 'fp'; set[#set + 1] = ans.fp
    if record_packable(set) then return record_write_done(key, set, ans.ttl_ms) end
    set[#set + 1] = 'state'; set[#set + 1] = 'done'
    redis.call('HSET', key, unpack(set))
    return redis.call('PEXPIRE', key, ans.ttl_ms)
  end
  if ans.token then set[#set + 1] = 'state'; set[#set + 1] = 'done' end
  if not ans.token then set[#set + 1] = 'fp'; set[#set + 1] = ans.fp end
  redis.call('HSET', key, unpack(set))
  if not ans.token then redis.call('PEXPIRE', key, ans.ttl_ms) end
end
local function made_by(key, ans)
  -- A key this script has just taken new has no record yet, so nothing made: no read.
  if not key or not ans or untaken then return nil end
  -- Beside the effect (neither taken nor held here) the answer is a hash.
  local rec = record_get(key, {'made', 'state', 'status'}, not (ans.token or ans.held))
  if ans.held then held_read[key] = {rec[2], rec[3]} end
  return rec[1] or nil
end
