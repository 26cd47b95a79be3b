-- Postgres drops the CHECK constraints on statuses, step types and outcomes (preparing them
-- again for every insert cost ~20 us of server time per statement); SQLite keeps them: they
-- are compiled into its prepared statements.
SELECT 1;
