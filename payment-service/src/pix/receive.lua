-- Takes in a provider's webhook whose signature was verified: stored once per webhook-id, in
-- the stream the worker reads, before the provider is answered 200. A re-sent webhook (the
-- same id) is answered 200 again and stored nothing.
-- KEYS: the id's de-duplication marker, the stream. ARGV: provider, webhook-id, body, how long
-- the marker is kept (ms), the stream's approximate cap.
local seen, stream = KEYS[1], KEYS[2]
local provider, id, body, keep_ms, cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not redis.call('SET', seen, '1', 'NX', 'PX', keep_ms) then return 'duplicate' end
redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', 'provider', provider, 'id', id, 'body', body)
return 'stored'
