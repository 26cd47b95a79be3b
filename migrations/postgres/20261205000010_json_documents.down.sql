ALTER TABLE step_executions ALTER COLUMN input TYPE jsonb USING input::jsonb,
                            ALTER COLUMN output TYPE jsonb USING output::jsonb;
ALTER TABLE workflow_runs ALTER COLUMN input TYPE jsonb USING input::jsonb,
                          ALTER COLUMN output TYPE jsonb USING output::jsonb;
DO $$
BEGIN
    EXECUTE 'ALTER TABLE step_executions ALTER COLUMN input SET COMPRESSION lz4, '
            'ALTER COLUMN output SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE workflow_runs ALTER COLUMN input SET COMPRESSION lz4, '
            'ALTER COLUMN output SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value OR syntax_error THEN
    RAISE NOTICE 'lz4 compression is not available here (%); values stay pglz-compressed', SQLERRM;
END
$$;
