-- One request against a caller's limit: GCRA (the generic cell rate algorithm), the token bucket
-- kept as one number, the theoretical arrival time (TAT) of the next request. Each request
-- moves the TAT one emission interval on; a request is allowed while the TAT stays within the
-- burst's worth of intervals of now. Redis' clock is the one clock of every replica (needs
-- clock.lua).
-- A refused request changes nothing, so a caller hammering past its limit does not push its
-- own recovery further out. The timestamp is kept out of the AOF (REPL_NONE): losing it in a
-- restart only gives every caller a fresh burst, and a write per request fsynced under
-- `appendfsync always` would be the dearest part of the limiter. Its expiry, though, is
-- replicated (a DEL in the AOF when it lapses): the key outlives its TAT by IDLE_MS, so a
-- caller who comes back within that finds it (a TAT in the past reads as now) and costs no DEL.
-- take_rate(key, interval, burst): key holds the caller's TAT; interval is µs per request,
--   burst a count of requests. Returns {allowed (1|0), remaining, µs until another request is
--   allowed (0 when allowed), µs until the bucket is full again}. It runs in limit.lua alone,
--   or first in a route's own script (ratelimit::Deferred), whose writes it leaves replicated.
local function take_rate(key, interval, burst)
  interval, burst = tonumber(interval), tonumber(burst)
  local now = now_us()
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local tolerance = interval * burst
  if new_tat - now > tolerance then
    return {0, 0, new_tat - now - tolerance, tat - now}
  end
  local IDLE_MS = 60000
  redis.set_repl(redis.REPL_NONE)
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + IDLE_MS)
  redis.set_repl(redis.REPL_ALL)
  return {1, math.floor((tolerance - (new_tat - now)) / interval), 0, new_tat - now}
end
