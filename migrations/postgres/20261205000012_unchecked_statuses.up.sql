-- Statuses, step types and outcomes are no longer checked by the database. Braid writes them
-- only from its own types and parses every one it reads back (an unknown status is reported
-- as a corrupt row); a CHECK constraint made every insert prepare its expressions again,
-- ~20 us of server time per statement, on a chain's path between two commits (README,
-- "Benchmarks"). Write these columns by hand only with the values the README lists.
ALTER TABLE step_executions DROP CONSTRAINT IF EXISTS step_executions_status_check;
ALTER TABLE step_executions DROP CONSTRAINT IF EXISTS step_executions_step_type_check;
ALTER TABLE step_executions DROP CONSTRAINT IF EXISTS step_executions_outcome_check;
ALTER TABLE workflow_runs DROP CONSTRAINT IF EXISTS workflow_runs_status_check;
