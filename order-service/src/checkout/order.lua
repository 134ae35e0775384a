-- The order record, for the checkout scripts (needs clock.lua, settle.lua and counts.lua). An
-- order's hash, its shard's totals and recovery's set of active orders share a slot.
--
-- Every write is fsynced and lands in the AOF, so a checkout writes as little as it can:
-- - Steps are a field of the order's hash ('st', a line per step: steps.lua), written by the
--   HSET that records the change: a list beside it cost a command and its key name per step.
--   `steps` in KEYS is the list older versions appended to: read with the order and deleted
--   with it, never written.
-- - A processing order is not in the totals: GET /order/totals counts it when read, from
--   recovery's set (totals.lua), which holds every processing order anyway. An order is
--   counted once, when it leaves processing, in its currency's bucket (XXX, ISO 4217 "no
--   currency", for one whose price was never known). Counting it at its start and moving it
--   at its end cost every checkout a command and two fields. A new order stores no currency
--   or amount (none is XXX and 0), nor its id (its key's name has it), nor updatedAt (a
--   step's time is the update's: orders::store reads the latest).
--
-- new_order_from(argv): a new order's arguments by name, as push_new_order in Rust passes them
--   (ARGV[1..10]): id, item_id, quantity, customer_id, payment_method, at, idem_key (the
--   client's Idempotency-Key, stored as 'ik': its record's name is made from it; older versions
--   stored that name in 'idemKey'), fp, owner, lease_ms. `at` is in milliseconds (older orders
--   kept RFC 3339 text; orders::store reads both). Its 'created' step is not written:
--   createdAt is its time (orders::store reads it so), and its first step is then s1.
-- create_order(order, active, o): creates it and leases it to its runner; 0 if it exists.
-- change_from(argv): a change's arguments by name (ARGV[1..6]): at, steps ("name status at",
--   one per line, oldest first: the saga records the steps that go on with the next write;
--   '' for none),
--   status, currency, amount ('' to keep each), owner.
-- update_order(order, steps, totals, outbox, c, argv, pairs_from): records one saga event:
--   adds the step, sets the field/value pairs argv[pairs_from..], and when the order's totals
--   bucket (`bucket`) changes moves it there in the same step (one HSET of the counts it
--   changes, add_counts), so the totals always match the orders. A terminal order is never
--   changed again, and only its owner changes it. An order that ends (completed, failed) is
--   published in the same step to the shard's outbox stream, which payment's merchant-webhook
--   dispatcher reads: the event is never lost between the change and its webhook. Returns 'ok',
--   whether the order owes a release after the change and its status and respStatus after it
--   (for settle_checkout, which then reads neither again), or why nothing changed.
-- settle_checkout(key, active, order, mode, s, owed, known): settles the checkout's key
--   ('finish' with settle_from's `s`, or 'free'; a pointer is left as it is when its order
--   holds the answer, deleted when freed) and takes the order out of recovery's set: a
--   settled key leaves recovery nothing to do, unless the order still owes stock a release
--   (`releaseOwed`): then it stays in the set, due at once, until a release gets through
--   (release_done.lua). `owed`: whether it does, when the caller has just read it (nil: read
--   here); `known`: the order's {status, respStatus}, likewise.
-- abandon_order(order, steps, active, id): deletes an order that never began (see
--   abandon.lua); 0 if it had begun after all. Processing, it was in no totals.
--
-- The checkout's key record is a pointer to its order: one string, "t\n<order id>" (older
-- versions wrote "token\n<order id>"), set with the key's expiry by one SET ... PX
-- (record.lua's packed form, so record_get and IdempotencyStore::token_of read its token).
-- The order already holds what a hash record repeated: the request's fingerprint ('fp'), the
-- runner's lease (its score in recovery's set) and the answer (a completed order's 200 is
-- rendered from its fields, any other is stored with it: respStatus, respCtype, respBody).
-- An answer the order does not hold (a Pix's 202, with its Location) turns the pointer into
-- the hash record keys taken before #29's seventh pass are, which the shared begin, finish
-- and free read as before.
-- key_pointer(key): the order id the key points at, or nil and the key's kind ('hash', 'none').
--   One GET: a hash record (a 202, or a key taken before the pointers) answers it WRONGTYPE,
--   dearer than a TYPE first but rare, where every checkout's pointer saves that TYPE.
-- hold_pointer(key, id, ttl_ms): takes the key for order `id`.
-- pointer_begin(active, order_prefix, id, fp): what a retry of a key pointing at order `id`
--   gets (begin's decisions), or nil when that order is gone (the key is then free).
-- settle_pointer(key, order, id, mode, s, known): settle_checkout's settling of a pointer.
-- settle_key(key, order, mode, s, known): settles the key alone ('finish' or 'free'), a
--   pointer or a hash record.
local function new_order_from(argv)
  return {
    id = argv[1], item_id = argv[2], quantity = argv[3], customer_id = argv[4], payment_method = argv[5],
    at = argv[6], idem_key = argv[7], fp = argv[8], owner = argv[9], lease_ms = argv[10],
  }
end
local function create_order(order, active, o)
  if redis.call('EXISTS', order) == 1 then return 0 end
  local now = now_ms()
  redis.call('HSET', order, 'status', 'processing', 'itemId', o.item_id, 'quantity', o.quantity,
    'customerId', o.customer_id, 'paymentMethod', o.payment_method, 'createdAt', o.at,
    'ik', o.idem_key, 'fp', o.fp, 'owner', o.owner)
  redis.call('ZADD', active, now + tonumber(o.lease_ms), o.id)
  return 1
end
local function change_from(argv)
  return { at = argv[1], step = argv[2], status = argv[3], currency = argv[4], amount = argv[5], owner = argv[6] }
end
-- The id of the order whose hash is `order` (the hash does not repeat it).
local function order_id_of(order) return string.match(order, ':order:(.+)$') end
-- The totals bucket an order is counted in, and the amount it counts there; nil while it is
-- processing (counted by totals.lua). A bucket is named by its currency and a letter for the
-- status (orders::store's bucket_of reads them), its fields ':n' (count) and ':a' (amount):
-- every write is fsynced. Totals written before #29's twelfth pass go on counting in fields
-- named in full, which the reader adds to these.
local function bucket(status, currency, amount)
  if status == 'processing' then return nil end
  local letter = status
  if status == 'completed' then letter = 'c'
  elseif status == 'failed' then letter = 'f'
  elseif status == 'compensated' then letter = 'x'
  elseif status == 'awaiting_payment' then letter = 'w'
  end
  return currency .. ':' .. letter, amount
end
local function update_order(order, steps, totals, outbox, c, argv, pairs_from)
  local function fmt(n) return string.format('%d', n) end
  local cur = redis.call('HMGET', order, 'status', 'currency', 'amount', 'owner', 'itemId', 'quantity', 'customerId',
    'n', 'releaseOwed', 'respStatus', 'st')
  if not cur[1] then return 'missing' end
  if cur[1] ~= 'processing' and cur[1] ~= 'awaiting_payment' then return 'terminal' end
  if cur[4] and cur[4] ~= c.owner then return 'fenced' end
  local was_currency, was_amount = cur[2] or 'XXX', cur[3] or '0'
  local status = cur[1]
  if c.status ~= '' then status = c.status end
  local currency = was_currency
  if c.currency ~= '' then currency = c.currency end
  local amount = was_amount
  if c.amount ~= '' then amount = c.amount end
  -- One HSET of what changed, the step included. A step tells when the order was updated;
  -- only a change without one writes updatedAt.
  local set = {}
  local function put(field, value) set[#set + 1] = field; set[#set + 1] = value end
  if c.step == '' then put('updatedAt', c.at) end
  local from, from_amount = bucket(cur[1], was_currency, was_amount)
  local to, to_amount = bucket(status, currency, amount)
  if from ~= to or from_amount ~= to_amount then
    local counts = {}
    if from then
      counts = {from .. ':n', -1, from .. ':a', fmt(-tonumber(from_amount))}
    end
    if to then
      counts[#counts + 1] = to .. ':n'; counts[#counts + 1] = 1
      counts[#counts + 1] = to .. ':a'; counts[#counts + 1] = to_amount
    end
    add_counts(totals, counts)
  end
  if status ~= cur[1] then put('status', status) end
  if currency ~= was_currency then put('currency', currency) end
  if amount ~= was_amount then put('amount', amount) end
  if c.step ~= '' then push_steps(set, steps_of(cur[8], cur[11]), c.step) end
  local owed = cur[9] ~= false
  local resp_status = cur[10]
  for i = pairs_from, #argv, 2 do
    put(argv[i], argv[i + 1])
    if argv[i] == 'releaseOwed' then owed = true end
    if argv[i] == 'respStatus' then resp_status = argv[i + 1] end
  end
  redis.call('HSET', order, unpack(set))
  if status ~= cur[1] and (status == 'completed' or status == 'failed') then
    redis.call('XADD', outbox, '*', 't', 'order.' .. status, 'o', order_id_of(order), 'i', cur[5] or '',
      'q', cur[6] or '', 'u', cur[7] or '', 'm', amount, 'c', currency)
  end
  return 'ok', owed, {status, resp_status}
end
local function key_pointer(key)
  local v = redis.pcall('GET', key)
  if not v then return nil, 'none' end
  if type(v) == 'table' then return nil, 'hash' end
  return string.match(v, '^t\n(.+)$') or string.match(v, '^token\n(.+)$'), 'string'
end
local function hold_pointer(key, id, ttl_ms)
  redis.call('SET', key, 't\n' .. id, 'PX', ttl_ms)
end
-- Statuses of an order whose checkout completed (OrderStatus::was_completed): its 200 is
-- rendered from its fields.
local WAS_COMPLETED = {completed = true, partially_refunded = true, refunded = true}
local function pointer_begin(active, order_prefix, id, fp)
  local cur = redis.call('HMGET', order_prefix .. id, 'status', 'fp', 'respStatus', 'respCtype', 'respBody')
  if not cur[1] then return nil end
  if string.sub(cur[2] or '', 1, 16) ~= string.sub(fp, 1, 16) then return {'reused'} end
  if cur[1] ~= 'processing' and cur[1] ~= 'awaiting_payment' then
    if cur[3] then return {'replay', cur[3], cur[4] or '', cur[5] or '', ''} end
    if WAS_COMPLETED[cur[1]] then return {'replay', '200', '', '', '', id} end
  end
  -- Not answered yet: busy while its runner's lease lasts, else the retry may take it over
  -- (claim.lua then decides, on the order, who runs it).
  local lease = tonumber(redis.call('ZSCORE', active, id)) or 0
  local now = now_ms()
  if lease > now then return {'busy', tostring(lease - now)} end
  return {'resume', id}
end
local function settle_pointer(key, order, id, mode, s, known)
  if id ~= s.token then return end
  if mode == 'free' then redis.call('DEL', key); return end
  local cur = known or redis.call('HMGET', order, 'status', 'respStatus')
  if (s.status == '200' and WAS_COMPLETED[cur[1]]) or (cur[2] == s.status and s.location == '') then return end
  -- An answer its order does not hold: the key keeps it, as a hash record, for what is left
  -- of its expiry.
  local ttl = redis.call('PTTL', key)
  redis.call('DEL', key)
  finish(key, s.token, s.fp, s.status, s.ctype, s.body, s.location, ttl > 0 and ttl or s.ttl_ms)
end
local function settle_key(key, order, mode, s, known)
  local id = key_pointer(key)
  if id then settle_pointer(key, order, id, mode, s, known)
  elseif mode == 'free' then free(key, s.token)
  else finish(key, s.token, s.fp, s.status, s.ctype, s.body, s.location, s.ttl_ms) end
end
local function settle_checkout(key, active, order, mode, s, owed, known)
  settle_key(key, order, mode, s, known)
  if owed == nil then owed = redis.call('HEXISTS', order, 'releaseOwed') == 1 end
  if owed then
    redis.call('ZADD', active, now_ms(), s.token)
  else
    redis.call('ZREM', active, s.token)
  end
end
local function abandon_order(order, steps, active, id)
  local cur = redis.call('HMGET', order, 'status', 'reservationId', 'chargeId')
  if cur[1] ~= 'processing' or cur[2] or cur[3] then return 0 end
  redis.call('DEL', order, steps)
  redis.call('ZREM', active, id)
  return 1
end
