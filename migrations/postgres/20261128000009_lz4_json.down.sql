DO $$
BEGIN
    EXECUTE 'ALTER TABLE step_executions ALTER COLUMN input SET COMPRESSION default, '
            'ALTER COLUMN output SET COMPRESSION default';
    EXECUTE 'ALTER TABLE workflow_runs ALTER COLUMN input SET COMPRESSION default, '
            'ALTER COLUMN output SET COMPRESSION default';
EXCEPTION WHEN syntax_error THEN
    NULL;
END
$$;
