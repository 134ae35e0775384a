-- One request against a caller's limit (gcra.lua's take_rate), for the middleware.
-- KEYS: the caller's TAT. ARGV: emission interval (µs per request), burst (requests).
return take_rate(KEYS[1], ARGV[1], ARGV[2])
