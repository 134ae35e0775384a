-- move_wallet(K, ki, A, ai): one movement of a wallet's balance — a credit, a refund credited
-- back, or a debit for a charge — with its transaction, its event and the marker of the request that made it, in one
-- step: the balance always equals the sum of its transactions and of its events, and a request
-- retried after a crash finds its movement (the marker) instead of moving the money twice.
-- A debit larger than the balance is refused and writes nothing ('insufficient'). A credit that
-- would take the balance past the limit is refused too ('limit'): Lua's numbers are exact
-- integers only below 2^53, so balances stay below that (9 000 000 000 000 000).
-- KEYS from K[ki]: wallet (hash currency → balance), its transactions (list, oldest first),
--   marker, the wallet's events, the shard's aggregates, the shard's outbox (a credit is
--   published there for merchant webhooks, events.lua).
-- ARGV from A[ai]: kind (credit | refund | debit), amount, currency, transactionId, at, marker
--   TTL (ms), customerId, chargeId ('' for a credit), correlation (the order, or the customer),
--   traceId.
local function move_wallet(K, ki, A, ai)
  local wallet, txs, marker, events, aggregates, outbox = unpack(K, ki, ki + 5)
  local kind, amount, currency, tx_id, at, marker_ttl_ms, customer_id, charge_id, correlation, trace_id =
    unpack(A, ai, ai + 9)
  local LIMIT = 9000000000000000
  local prev = redis.call('GET', marker)
  if prev then return {'found', prev} end
  local balance = tonumber(redis.call('HGET', wallet, currency)) or 0
  local n = tonumber(amount)
  local after
  if kind == 'debit' then
    if n > balance then return {'insufficient', int(balance)} end
    after = balance - n
  else
    if balance + n > LIMIT then return {'limit', int(balance)} end
    after = balance + n
  end
  redis.call('HSET', wallet, currency, int(after))
  local tx = '{"transactionId":"' .. tx_id .. '","type":"' .. kind .. '","amount":' .. amount .. ',"currency":"' ..
    currency .. '","balanceAfter":' .. int(after) .. ',"chargeId":' ..
    (charge_id ~= '' and ('"' .. charge_id .. '"') or 'null') .. ',"at":"' .. at .. '"}'
  redis.call('RPUSH', txs, tx)
  redis.call('SET', marker, tx, 'PX', marker_ttl_ms)
  local event_kind = kind == 'debit' and 'wallet.debited' or (kind == 'refund' and 'wallet.refunded' or 'wallet.credited')
  local data = string.sub(tx, 1, -2) .. ',"customerId":' .. cjson.encode(customer_id) ..
    ',"traceId":' .. (trace_id ~= '' and cjson.encode(trace_id) or 'null') .. '}'
  local seq = append_event(events, aggregates, 'wal_' .. customer_id, event_json(event_kind, at, correlation, data))
  if kind == 'credit' then publish(outbox, 'wal_' .. customer_id, seq, '') end
  return {'moved', tx}
end
