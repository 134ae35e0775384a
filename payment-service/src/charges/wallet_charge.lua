-- A wallet checkout's payment on one Redis node: the debit (wallet.lua) and the charge's record
-- (record.lua) in one step, one round trip instead of two. The wallet and the charge live in
-- different slots (the customer's, the order's), so on Redis Cluster the caller runs move.lua
-- then charge.lua instead. Anything but a fresh debit (the key's debit found again, too little
-- in the wallet) is answered as move_wallet answers it, after 'debit', and the caller goes on
-- the two-step way.
-- KEYS: wallet.lua's six, record.lua's seven[, answer]. ARGV: wallet.lua's ten, record.lua's
-- nineteen[, the answer].
local moved = move_wallet(KEYS, 1, ARGV, 1)
if moved[1] ~= 'moved' then
  table.insert(moved, 1, 'debit')
  return moved
end
return record_charge(KEYS, 7, ARGV, 11, KEYS[14], answer_from(ARGV, 30))
