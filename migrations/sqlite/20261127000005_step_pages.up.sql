-- Step executions are read a page at a time, in creation order (ids are UUIDv7), so the
-- index by run is by id rather than by start time (no query reads that order).
DROP INDEX step_executions_by_run;
CREATE INDEX step_executions_by_run_id ON step_executions (run_id, id);
