-- Ownership: a run is executed only by the host holding its lease. A host takes a run by
-- an atomic claim that bumps `epoch`; every later write of that host for the run carries
-- the epoch, and the database refuses it once the epoch has moved on (another host took
-- the run over).
ALTER TABLE workflow_runs ADD COLUMN owner_host_id TEXT;
-- SQLite: milliseconds since the Unix epoch (compared with unixepoch('subsec')).
ALTER TABLE workflow_runs ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE workflow_runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
-- How many times a failed or cancelled run was driven again (`redrive`).
ALTER TABLE workflow_runs ADD COLUMN redrive_count INTEGER NOT NULL DEFAULT 0;
-- Claims scan only unfinished runs.
CREATE INDEX workflow_runs_claimable ON workflow_runs (created_at) WHERE status IN ('pending', 'running');

-- The exact definition every run started with, by digest (`workflow_runs.workflow_digest`),
-- so that any host can resume any run, however it was started.
CREATE TABLE workflow_definitions (
    digest     TEXT        PRIMARY KEY,
    definition TEXT       NOT NULL,
    created_at TEXT NOT NULL
);
INSERT INTO workflow_definitions (digest, definition, created_at)
    SELECT digest, definition, created_at FROM workflows WHERE true ON CONFLICT (digest) DO NOTHING;

-- `Idempotency-Key` of POST /v1/workflows/{name}/runs: the same key (per workflow) is the
-- same run.
CREATE TABLE run_idempotency_keys (
    workflow_name   TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    run_id          TEXT        NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (workflow_name, idempotency_key)
);

-- Where an execution sits in the run, stable across attempts and resumes: `a`,
-- `block/branch/a`, `map[3]/a`, `loop[2]/a`, `switch/cases[0]/a`. Resume and redrive reuse
-- what succeeded by this key; the agent's idempotency key is the run id plus this key.
ALTER TABLE step_executions ADD COLUMN step_key TEXT;
-- Time spent waiting for an instance slot before the agent started (not part of its deadline).
ALTER TABLE step_executions ADD COLUMN queued_us INTEGER;
-- The host that executed the row.
ALTER TABLE step_executions ADD COLUMN host_id TEXT;
