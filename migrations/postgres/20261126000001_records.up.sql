-- Runs and step executions: what ran, how it ended, what it cost.
CREATE TABLE workflow_runs (
    id               uuid PRIMARY KEY,
    workflow_name    text        NOT NULL,
    workflow_version text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    input            jsonb,
    output           jsonb,
    error            text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX workflow_runs_by_created ON workflow_runs (created_at DESC);
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow_name, created_at DESC);
CREATE INDEX workflow_runs_by_status ON workflow_runs (status, created_at DESC);

-- One row per step execution (per attempt). A parallel/map block has its own row; the
-- executions inside it point at that row through parent_step_id and carry branch_name
-- or item_index.
CREATE TABLE step_executions (
    id                uuid PRIMARY KEY,
    run_id            uuid        NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    step_id           text        NOT NULL,
    step_type         text        NOT NULL CHECK (step_type IN ('agent', 'parallel', 'map', 'switch', 'loop')),
    parent_step_id    uuid,
    branch_name       text,
    item_index        bigint,
    join_policy       text,
    agent_name        text,
    agent_digest      text,
    attempt           integer     NOT NULL DEFAULT 1,
    status            text        NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    outcome           text        CHECK (outcome IN ('succeeded', 'guest_error', 'trap', 'timeout', 'out_of_fuel', 'memory_limit', 'invalid_output', 'cancelled')),
    input             jsonb,
    output            jsonb,
    error             text,
    started_at        timestamptz,
    finished_at       timestamptz,
    instantiate_us    bigint,
    execute_us        bigint,
    fuel_consumed     bigint,
    memory_peak_bytes bigint
);
-- "The branches of this block".
CREATE INDEX step_executions_branches ON step_executions (run_id, parent_step_id, branch_name);
CREATE INDEX step_executions_by_run ON step_executions (run_id, started_at);

CREATE TABLE step_logs (
    step_execution_id uuid        NOT NULL REFERENCES step_executions (id) ON DELETE CASCADE,
    seq               integer     NOT NULL,
    level             text        NOT NULL,
    source            text        NOT NULL,
    message           text        NOT NULL,
    logged_at         timestamptz NOT NULL,
    PRIMARY KEY (step_execution_id, seq)
);
