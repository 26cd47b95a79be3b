DROP TABLE step_logs;
DROP TABLE step_executions;
DROP TABLE workflow_runs;
