DROP INDEX step_executions_by_run_id;
CREATE INDEX step_executions_by_run ON step_executions (run_id, started_at);
