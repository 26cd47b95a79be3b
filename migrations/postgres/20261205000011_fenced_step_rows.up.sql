-- Step rows no longer carry a foreign key to their run. Every step row is written under its
-- run's fence (the run's row, locked FOR SHARE in the same statement, must have the epoch
-- the writer carries), which already proves the run exists; the key's check ran again for
-- every row, a trigger and a query each, ~30% of the server time of inserting a wide
-- fan-out's rows (README, "Benchmarks"). Braid never deletes runs; deleting one by hand
-- now leaves its step rows (delete them first: `DELETE FROM step_executions WHERE run_id = ...`).
ALTER TABLE step_executions DROP CONSTRAINT IF EXISTS step_executions_run_id_fkey;
