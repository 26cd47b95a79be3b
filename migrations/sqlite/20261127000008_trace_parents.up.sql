-- The W3C `traceparent` a run was started with (`POST .../runs` header): its exported trace
-- is a child of the caller's. Only runs started with one have a row.
CREATE TABLE run_trace_parents (
    run_id      TEXT PRIMARY KEY,
    traceparent TEXT NOT NULL
);
