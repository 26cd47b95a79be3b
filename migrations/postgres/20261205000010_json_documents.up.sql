-- Inputs and outputs of runs and step executions become text holding compact JSON, as
-- SQLite already stores them. Braid checks every document before it writes it (syntax,
-- depth, no NUL) and passes an agent's output on as the text it is; Postgres parsing it
-- again cost more than the rest of the row: on a 2,000-branch fan-out of a step with ~1 KB
-- in and ~1 KB out, `jsonb` cost ~80 ms of server time per 2,000 rows and `json` (which
-- only validates) ~35 ms, against ~18 ms as text (README, "Benchmarks"). Query them as
-- JSON with a cast: `output::jsonb ->> 'total'`.
ALTER TABLE step_executions ALTER COLUMN input TYPE text USING input::text,
                            ALTER COLUMN output TYPE text USING output::text;
ALTER TABLE workflow_runs ALTER COLUMN input TYPE text USING input::text,
                          ALTER COLUMN output TYPE text USING output::text;
-- A change of type resets the columns' compression: lz4 again where the server has it.
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
