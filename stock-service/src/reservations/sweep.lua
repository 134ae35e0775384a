-- Returns an item's lapsed reservations to available (stock.lua's sweep), 500 at most.
-- KEYS: item, expiring. ARGV: reservation key prefix.
return sweep(KEYS[1], KEYS[2], ARGV[1], now_ms(), 500)
