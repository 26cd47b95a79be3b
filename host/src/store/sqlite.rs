//! The embedded SQLite store: ids as hyphenated UUID text, JSON as text, times as RFC 3339
//! text, so that the file reads well with the `sqlite3` shell too. Lease expiries are
//! milliseconds since the Unix epoch, by SQLite's clock.

super::backend::sql_backend!(
    db: sqlx::Sqlite,
    pool: sqlx::SqlitePool,
    id: String,
    to_id: |id: Uuid| id.hyphenated().to_string(),
    from_id: |id: String| id.parse::<Uuid>().map_err(|e| StoreError::Corrupt(format!("bad id {id:?}: {e}"))),
    migrations: "../migrations/sqlite",
    now: "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
    lease_until: ("(CAST(unixepoch('subsec') * 1000 AS INTEGER) + ", ")"),
    skip_locked: ""
);

super::backend::insert_steps_as_values!(sqlx::Sqlite);
