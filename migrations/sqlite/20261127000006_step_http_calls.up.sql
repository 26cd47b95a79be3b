-- One row per outbound HTTP request of a step execution: where it went (no query string,
-- no headers, no bodies: those can carry secrets), how it ended, bytes each way, duration.
CREATE TABLE step_http_calls (
    step_execution_id text        NOT NULL REFERENCES step_executions (id) ON DELETE CASCADE,
    seq               integer     NOT NULL,
    method            text        NOT NULL,
    scheme            text        NOT NULL,
    host              text        NOT NULL,
    port              integer     NOT NULL,
    path              text        NOT NULL,
    status            integer,
    error             text,
    bytes_out         integer     NOT NULL,
    bytes_in          integer     NOT NULL,
    duration_us       integer     NOT NULL,
    started_at        text        NOT NULL,
    PRIMARY KEY (step_execution_id, seq)
);
