-- Deletes an order that never began: created, but its Idempotency-Key was never taken for it
-- (an older version wrote the two apart, and a process could die in between, or another
-- request held the key; begin.lua now writes both at once), or taken by a request that never
-- learnt so (undo_begin.lua). Nothing downstream can have happened (the saga starts only after
-- its request learns the key is taken), so it leaves no trace, totals included.
-- KEYS: order, steps, active. ARGV: order id.
return abandon_order(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
