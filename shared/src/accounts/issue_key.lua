-- Issues an API key: its hash (never the key) under the account's keys and in the lookup by
-- hash, in one step, so a key is either usable and listed or neither. With mode 'create' the
-- account is created first. The account id and the key id are derived from the request's
-- Idempotency-Key by the caller, so a retry after a crash (the answer, and so the key, never
-- reached the client) finds them again: the unseen key's hash is then replaced by the new
-- one's, which revokes it.
-- KEYS: the account, its keys (hash keyId -> key hash), the lookup of this key's hash.
-- ARGV: mode ('create' | 'issue'), name, createdAt, keyId, key hash, accountId, lookup prefix.
local account, keys, lookup = unpack(KEYS, 1, 3)
local mode, name, created_at, key_id, hash, account_id, prefix = unpack(ARGV, 1, 7)
if mode == 'create' then
  if redis.call('EXISTS', account) == 0 then
    redis.call('HSET', account, 'name', name, 'createdAt', created_at)
  end
elseif redis.call('EXISTS', account) == 0 then
  return {'not_found'}
end
local unseen = redis.call('HGET', keys, key_id)
if unseen then redis.call('DEL', prefix .. unseen) end
redis.call('HSET', keys, key_id, hash)
redis.call('SET', lookup, account_id .. ' ' .. key_id)
return {'issued', redis.call('HGET', account, 'name')}
