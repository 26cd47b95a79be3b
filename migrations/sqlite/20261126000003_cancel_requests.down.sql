DROP INDEX workflow_runs_cancel_requested;
ALTER TABLE workflow_runs DROP COLUMN cancel_requested_at;
