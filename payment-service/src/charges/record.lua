-- Recording a charge (charge.lua; wallet_charge.lua after the debit): one script so that the charge record, its order index, the totals that count it and
-- the Idempotency-Key marker are written together or not at all. The marker is the stored
-- answer's 'made' field when the request stores one (answer.lua), else a key of its own. If the
-- marker exists (a retry
-- after a crash between this script and the idempotency record's finish), the charge it names
-- is returned ('found') instead of recording a second one ('charged'). A marker found for a
-- different request (the key's idempotency record vanished, the marker not yet) is refused as
-- a reused key.
-- The totals are incremented first (add_counts): an overflow is the only failure a write here
-- can meet, and a failing script keeps the writes made before the failure.
-- A new charge also stores its answer, when given one, so that the Idempotency-Key's record
-- needs no second write: on one node the answer settles that record itself (answer.lua's
-- `held` key), on a cluster it is stored beside the charge; a found one is answered by the
-- caller.
-- The charge's first event (charge.succeeded or charge.declined, built by the caller: no JSON
-- is assembled here) is appended in the same step (events.lua).
-- The totals count per provider (`<gateway>:<CUR>:c:a`, charged amount: payment::store names
-- the fields): the per-currency books are their sum, read at GET /totals, so byGateway costs
-- no extra write here.
-- record_charge(K, ki, A, ai, answer_at, ans): KEYS from K[ki]: charge, order index, totals,
--   marker, the charge's events, the shard's aggregates, the shard's outbox; ARGV from A[ai] (positions, not a
--   table of names: a table per call costs script time on every checkout):
--   chargeId, orderId, amount, currency, customerId, paymentMethod, status, declineCode,
--   marker TTL (ms), charge key prefix (to read the marker's charge: same slot), gateway, the
--   event (JSON: it holds the charge's facts, its creation time and provider reference among
--   them; see events.lua's charge_fields), then the split: splitId ('' = none), its parts
--   (`recipient:amount:0;…`, divided by the caller), the split.executed event (JSON), the
--   recipients' key prefix and the shard's recipients set (both in the charge's slot); `ans`
--   the answer to store, if any; then the Pix code ('' for any other charge), the itemId ('' for
--   none: kept on the charge, whose owner its webhooks go to).
-- A succeeded charge is published to the outbox (events.lua) for merchant webhooks.
-- A pending charge (a Pix waiting for its payer) is not money yet: no totals, event
-- charge.pending, its code kept, and its split's parts and split.executed event kept aside
-- (`pendingSplits`, `splitEvent`) for pix_paid.lua to execute when it is paid.
-- A succeeded charge with a split keeps its parts, adds each to its recipient's earnings and
-- appends split.executed, in the same step as the charge: a charge is never without its split.
local function record_charge(K, ki, A, ai, answer_at, ans)
  local charge, order_index, totals, marker, events, aggregates, outbox = unpack(K, ki, ki + 6)
  local charge_id, order_id, amount, currency, customer_id, method, status, decline_code,
    marker_ttl_ms, charge_prefix, gateway, event,
    split_id, parts, split_event, recipient_prefix, recipients, pix_code, item = unpack(A, ai, ai + 18)
  -- With an answer, the answer's record is where an earlier attempt named its charge (older
  -- versions wrote a marker too, in the same script, so the answer is there whenever it is).
  local prev
  if ans then prev = made_by(answer_at, ans) else prev = redis.call('GET', marker) end
  if prev then
    local c = charge_fields(charge_prefix .. prev, string.match(events, '^(.*:ev:)') .. prev,
      {'orderId', 'amount', 'currency', 'customerId', 'paymentMethod', 'declineCode', 'pixCode'})
    if c[1] then
      if c[1] ~= order_id or c[2] ~= amount or c[3] ~= currency or c[4] ~= customer_id or c[5] ~= method then
        return {'reused'}
      end
      return {'found', prev, c[1], c[2], c[3], c[6] or '', c[7] or ''}
    end
  end
  if status == 'succeeded' then
    local books = gateway .. ':' .. currency .. ':c:'
    add_counts(totals, {books .. 'a', amount, books .. 'n', 1})
  end
  -- The hash holds what its first event (appended below) does not: the facts are the event's
  -- (charge_fields reads them there), and each byte is fsynced. Nor is the charge's id: its
  -- key's name has it. A field with nothing to say is left out (a missing one reads as empty).
  if item ~= '' then
    redis.call('HSET', charge, 'status', status, 'customerId', customer_id, 'itemId', item)
  else
    redis.call('HSET', charge, 'status', status, 'customerId', customer_id)
  end
  redis.call('RPUSH', order_index, charge_id)
  local seq = append_event(events, aggregates, charge_id, event)
  if status == 'succeeded' then publish(outbox, charge_id, seq, item) end
  if status == 'pending' then
    redis.call('HSET', charge, 'pixCode', pix_code)
    if split_id ~= '' then redis.call('HSET', charge, 'pendingSplits', parts, 'splitEvent', split_event, 'splitId', split_id) end
  end
  if status == 'succeeded' and split_id ~= '' then
    for recipient, part in string.gmatch(parts, '([^:;]+):(%d+):0') do
      redis.call('HINCRBY', recipient_prefix .. recipient, currency .. ':earned', part)
      redis.call('SADD', recipients, recipient)
    end
    redis.call('HSET', charge, 'splitId', split_id, 'splits', parts)
    append_event(events, aggregates, charge_id, split_event)
  end
  -- A stored answer names its charge: the marker is written only for a request without one.
  if ans then store_answer(answer_at, ans, nil, charge_id) else redis.call('SET', marker, charge_id, 'PX', marker_ttl_ms) end
  return {'charged', charge_id, order_id, amount, currency, decline_code, pix_code}
end
