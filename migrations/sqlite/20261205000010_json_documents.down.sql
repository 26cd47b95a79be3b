-- Postgres stores inputs and outputs as text from this version on; SQLite always did.
SELECT 1;
