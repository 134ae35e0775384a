-- A wallet's movement (wallet.lua): a credit, a refund credited back, or a debit.
-- KEYS and ARGV: wallet.lua's.
return move_wallet(KEYS, 1, ARGV, 1)
