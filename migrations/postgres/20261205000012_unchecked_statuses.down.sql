ALTER TABLE step_executions ADD CONSTRAINT step_executions_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped'));
ALTER TABLE step_executions ADD CONSTRAINT step_executions_step_type_check
    CHECK (step_type IN ('agent', 'parallel', 'map', 'switch', 'loop'));
ALTER TABLE step_executions ADD CONSTRAINT step_executions_outcome_check
    CHECK (outcome IN ('succeeded', 'guest_error', 'trap', 'timeout', 'out_of_fuel', 'memory_limit', 'invalid_output', 'cancelled'));
ALTER TABLE workflow_runs ADD CONSTRAINT workflow_runs_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled'));
