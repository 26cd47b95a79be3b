-- Runs and step executions (SQLite: ids are UUID text, JSON is text, times are RFC 3339 text).
CREATE TABLE workflow_runs (
    id               TEXT PRIMARY KEY,
    workflow_name    TEXT        NOT NULL,
    workflow_version TEXT        NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    input            TEXT,
    output           TEXT,
    error            TEXT,
    created_at       TEXT        NOT NULL,
    started_at       TEXT,
    finished_at      TEXT
);
CREATE INDEX workflow_runs_by_created ON workflow_runs (created_at DESC);
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow_name, created_at DESC);
CREATE INDEX workflow_runs_by_status ON workflow_runs (status, created_at DESC);

-- One row per step execution (per attempt). A parallel/map block has its own row; the
-- executions inside it point at that row through parent_step_id and carry branch_name
-- or item_index.
CREATE TABLE step_executions (
    id                TEXT PRIMARY KEY,
    run_id            TEXT        NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    step_id           TEXT        NOT NULL,
    step_type         TEXT        NOT NULL CHECK (step_type IN ('agent', 'parallel', 'map', 'switch', 'loop')),
    parent_step_id    TEXT,
    branch_name       TEXT,
    item_index        INTEGER,
    join_policy       TEXT,
    agent_name        TEXT,
    agent_digest      TEXT,
    attempt           INTEGER     NOT NULL DEFAULT 1,
    status            TEXT        NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    outcome           TEXT        CHECK (outcome IN ('succeeded', 'guest_error', 'trap', 'timeout', 'out_of_fuel', 'memory_limit', 'invalid_output', 'cancelled')),
    input             TEXT,
    output            TEXT,
    error             TEXT,
    started_at        TEXT,
    finished_at       TEXT,
    instantiate_us    INTEGER,
    execute_us        INTEGER,
    fuel_consumed     INTEGER,
    memory_peak_bytes INTEGER
);
-- "The branches of this block".
CREATE INDEX step_executions_branches ON step_executions (run_id, parent_step_id, branch_name);
CREATE INDEX step_executions_by_run ON step_executions (run_id, started_at);

CREATE TABLE step_logs (
    step_execution_id TEXT        NOT NULL REFERENCES step_executions (id) ON DELETE CASCADE,
    seq               INTEGER     NOT NULL,
    level             TEXT        NOT NULL,
    source            TEXT        NOT NULL,
    message           TEXT        NOT NULL,
    logged_at         TEXT        NOT NULL,
    PRIMARY KEY (step_execution_id, seq)
);
