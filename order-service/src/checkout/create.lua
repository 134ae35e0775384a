-- Creates the order of a checkout whose key's order is gone; 0 if it exists.
-- KEYS: order, steps, active. ARGV: the new order (new_order_from).
return create_order(KEYS[1], KEYS[3], new_order_from(ARGV))
