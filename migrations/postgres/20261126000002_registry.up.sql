-- Deployed agents and workflows, by name and version (immutable once deployed), and what
-- each run was pinned to when it started.
CREATE TABLE agent_components (
    digest     text        PRIMARY KEY,  -- sha256 of the component bytes, hex
    wasm       bytea       NOT NULL,
    size_bytes bigint      NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE agents (
    name       text        NOT NULL,
    version    text        NOT NULL,
    digest     text        NOT NULL REFERENCES agent_components (digest),
    size_bytes bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX agents_latest ON agents (name, created_at DESC);

CREATE TABLE workflows (
    name       text        NOT NULL,
    version    text        NOT NULL,
    digest     text        NOT NULL,  -- sha256 of the definition as deployed
    definition jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX workflows_latest ON workflows (name, created_at DESC);

ALTER TABLE workflow_runs ADD COLUMN workflow_digest text;
-- {"<agent reference as written>": {"name": ..., "version": ..., "digest": ...}}
ALTER TABLE workflow_runs ADD COLUMN pinned_agents jsonb;
