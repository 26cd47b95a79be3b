-- Every process that executes runs registers here and renews its row on its heartbeat. On
-- SQLite there is one such host at a time (a second is refused at start-up); the table
-- serves `GET /v1/hosts`. `expires_at`: milliseconds since the Unix epoch, SQLite's clock.
CREATE TABLE hosts (
    host_id       TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    heartbeat_at  TEXT    NOT NULL,
    expires_at    INTEGER NOT NULL,
    max_instances INTEGER NOT NULL,
    slots_in_use  INTEGER NOT NULL,
    runs_owned    INTEGER NOT NULL,
    units_taken   INTEGER NOT NULL,
    units_offered INTEGER NOT NULL
);
