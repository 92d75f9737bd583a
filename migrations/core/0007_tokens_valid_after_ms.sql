-- agents.tokens_valid_after moves from unix seconds to unix milliseconds (issue 25
-- item 7: a token requested in the same second as a reactivation was born inactive).
-- A stored second S becomes its last millisecond, so every token issued in or before
-- S stays inactive, as it was. Portable SQL: one file serves PostgreSQL and SQLite.
UPDATE agents SET tokens_valid_after = tokens_valid_after * 1000 + 999
WHERE tokens_valid_after IS NOT NULL;
