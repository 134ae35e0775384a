-- Charge: records a provider's answer (record.lua), with the charge's answer when given one.
-- KEYS: charge, order index, totals, marker, the charge's events, the shard's aggregates, the outbox[, answer].
-- ARGV: record.lua's nineteen [, the answer (answer_from)].
return record_charge(KEYS, 1, ARGV, 1, KEYS[8], answer_from(ARGV, 20))
