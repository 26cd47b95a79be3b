-- Inputs and outputs of runs and step executions are compressed with lz4 rather than pglz
-- when Postgres moves them out of line (rows over ~2 KB: a step with ~1 KB in and ~1 KB
-- out already is one). pglz costs several times more CPU per byte, on the writer's path:
-- a 2,000-branch fan-out of such a step ran ~1.3-1.9× faster with lz4 (README,
-- "Benchmarks"). Values already stored keep their compression. A Postgres built without
-- lz4 keeps pglz (the statements are run dynamically so that the error can be caught).
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
