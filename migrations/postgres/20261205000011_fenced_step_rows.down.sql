ALTER TABLE step_executions ADD CONSTRAINT step_executions_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES workflow_runs (id) ON DELETE CASCADE;
