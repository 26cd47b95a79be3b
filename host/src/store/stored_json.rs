//! `StoredJson`: a JSON column read back at any depth. Braid checks the JSON that comes in
//! (see [`crate::limits`]), but its own documents wrap those values deeper (a block's
//! output holds its branches' outputs), so the reader must not stop at serde's recursion
//! limit: what Braid wrote, Braid reads.

use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{Database, Decode, Type};

/// A JSON value decoded from a `jsonb` (Postgres) or `TEXT` (SQLite) column.
pub(super) struct StoredJson(pub serde_json::Value);

impl<DB: Database> Type<DB> for StoredJson
where
    Json<Box<RawValue>>: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <Json<Box<RawValue>> as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <Json<Box<RawValue>> as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for StoredJson
where
    Json<Box<RawValue>>: Decode<'r, DB>,
{
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        // The raw text is scanned without recursion, then read with a stack that grows.
        let raw = <Json<Box<RawValue>> as Decode<'r, DB>>::decode(value)?;
        Ok(StoredJson(crate::limits::read_stored_json(raw.0.get())?))
    }
}
