-- A cancellation asked for from outside the process running the run (`braid runs cancel`,
-- or the API of another host); the host running it polls for this and stops the run.
ALTER TABLE workflow_runs ADD COLUMN cancel_requested_at TEXT;
CREATE INDEX workflow_runs_cancel_requested ON workflow_runs (cancel_requested_at) WHERE cancel_requested_at IS NOT NULL;
