-- Settles an ended checkout's key and retires its order from recovery's set (settle_checkout).
-- KEYS: key record, active, order. ARGV: mode ('finish' or 'free'), then finish's arguments
-- (settle_from; for 'free' only the token, the order id).
settle_checkout(KEYS[1], KEYS[2], KEYS[3], ARGV[1], settle_from(ARGV, 2))
return 1
