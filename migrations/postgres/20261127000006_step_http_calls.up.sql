-- One row per outbound HTTP request of a step execution: where it went (no query string,
-- no headers, no bodies: those can carry secrets), how it ended, bytes each way, duration.
CREATE TABLE step_http_calls (
    step_execution_id uuid        NOT NULL REFERENCES step_executions (id) ON DELETE CASCADE,
    seq               integer     NOT NULL,
    method            text        NOT NULL,
    scheme            text        NOT NULL,
    host              text        NOT NULL,
    port              integer     NOT NULL,
    path              text        NOT NULL,
    status            integer,
    error             text,
    bytes_out         bigint      NOT NULL,
    bytes_in          bigint      NOT NULL,
    duration_us       bigint      NOT NULL,
    started_at        timestamptz NOT NULL,
    PRIMARY KEY (step_execution_id, seq)
);
