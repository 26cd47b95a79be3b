-- Every process that executes runs (`braid serve`, `braid worker`, `braid run`) registers
-- here and renews its row on its heartbeat; a row whose expiry has passed is a host that
-- stopped or died. `GET /v1/hosts` lists the live ones.
CREATE TABLE hosts (
    host_id       text        PRIMARY KEY,
    role          text        NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    max_instances integer     NOT NULL,
    slots_in_use  integer     NOT NULL,
    runs_owned    integer     NOT NULL,
    units_taken   bigint      NOT NULL,
    units_offered bigint      NOT NULL
);

-- Units of a fan-out (a branch's or a map item's agent step, input rendered, agent pinned
-- by digest) that the run's owner offers to other hosts because its own pool is full.
-- Claimed with FOR UPDATE SKIP LOCKED in batches; executed under a lease with a fencing
-- counter (`claim_epoch`); taken again once the lease expires.
CREATE TABLE work_units (
    id               uuid        PRIMARY KEY,
    run_id           uuid        NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    run_epoch        bigint      NOT NULL,
    owner_host_id    text        NOT NULL,
    step_key         text        NOT NULL,
    agent_digest     text        NOT NULL,
    spec             jsonb       NOT NULL,
    -- offered | claimed | done
    status           text        NOT NULL,
    attempt          integer     NOT NULL,
    claimed_by       text,
    claim_epoch      bigint      NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    -- The step execution the last take wrote (its outcome is the unit's), once done.
    row_id           uuid,
    retryable        boolean,
    created_at       timestamptz NOT NULL
);
CREATE INDEX work_units_open ON work_units (created_at) WHERE status IN ('offered', 'claimed');
CREATE INDEX work_units_run ON work_units (run_id);
