-- The two-level queue of deliveries, for the delivery scripts. Each endpoint has its own due
-- set (delivery id → next attempt, ms); the global due set holds each endpoint with work by
-- the time of its earliest, so the dispatcher finds every endpoint with something due however
-- long one endpoint's backlog is: a slow or dead endpoint cannot hide the others' deliveries.
-- refresh_due(due, endpoint_due, endpoint): after a change to an endpoint's due set, its place
--   in the global set follows its head (gone when it has nothing left).
local function refresh_due(due, endpoint_due, endpoint)
  local head = redis.call('ZRANGE', endpoint_due, 0, 0, 'WITHSCORES')
  if head[1] then
    redis.call('ZADD', due, head[2], endpoint)
  else
    redis.call('ZREM', due, endpoint)
  end
end
