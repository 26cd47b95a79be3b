//! The Postgres store: native `uuid`, `jsonb` and `timestamptz` columns.

super::backend::sql_backend!(
    db: sqlx::Postgres,
    pool: sqlx::PgPool,
    id: Uuid,
    to_id: |id: Uuid| id,
    from_id: |id: Uuid| Ok::<_, StoreError>(id),
    migrations: "../migrations/postgres"
);
