-- Postgres drops the foreign key from step rows to their run (its per-row check was a third
-- of a fan-out's insert time); SQLite keeps it: its check is an index lookup in process.
SELECT 1;
