-- Charge: records a provider's answer (record.lua), with the charge's answer when given one.
-- KEYS: charge, order index, totals, marker, the charge's events, the shard's aggregates[, answer].
-- ARGV: record.lua's twenty [, the answer (answer_from)].
return record_charge(KEYS, 1, ARGV, 1, KEYS[7], answer_from(ARGV, 21))
