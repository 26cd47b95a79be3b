-- Postgres only (lz4 compression of stored inputs and outputs); the same version here keeps
-- the two databases' migrations in step.
SELECT 1;
