-- Deployed agents and workflows, by name and version (immutable once deployed), and what
-- each run was pinned to when it started.
CREATE TABLE agent_components (
    digest     TEXT    PRIMARY KEY,  -- sha256 of the component bytes, hex
    wasm       BLOB    NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT    NOT NULL
);

CREATE TABLE agents (
    name       TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    digest     TEXT    NOT NULL REFERENCES agent_components (digest),
    size_bytes INTEGER NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX agents_latest ON agents (name, created_at DESC);

CREATE TABLE workflows (
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    digest     TEXT NOT NULL,  -- sha256 of the definition as deployed
    definition TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX workflows_latest ON workflows (name, created_at DESC);

ALTER TABLE workflow_runs ADD COLUMN workflow_digest TEXT;
-- {"<agent reference as written>": {"name": ..., "version": ..., "digest": ...}}
ALTER TABLE workflow_runs ADD COLUMN pinned_agents TEXT;
