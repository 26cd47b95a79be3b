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

/// A [`JsonDoc`](crate::json::JsonDoc) decoded from a text column holding JSON (inputs and
/// outputs, on both databases; a `json` or `jsonb` column reads too): the text as stored,
/// its syntax checked at any depth, parsed only if asked.
pub(super) struct StoredDoc(pub crate::json::JsonDoc);

impl<DB: Database> Type<DB> for StoredDoc
where
    String: Type<DB>,
    Json<Box<RawValue>>: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as Type<DB>>::compatible(ty) || <Json<Box<RawValue>> as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for StoredDoc
where
    String: Type<DB>,
    &'r str: Decode<'r, DB>,
    Json<Box<RawValue>>: Decode<'r, DB>,
{
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef as _;
        let text = if <String as Type<DB>>::compatible(&value.type_info()) {
            <&str as Decode<'r, DB>>::decode(value)?.to_owned()
        } else {
            let raw = <Json<Box<RawValue>> as Decode<'r, DB>>::decode(value)?;
            Box::<str>::from(raw.0).into_string()
        };
        Ok(StoredDoc(crate::json::JsonDoc::stored(text)?))
    }
}

/// The text a document is stored as: compact JSON, bound as text on both databases and
/// stored in text columns. Braid checks every document before it is written, so the
/// database does not parse it again (README, "Records").
pub(super) fn stored_text(doc: &Option<crate::json::JsonDoc>) -> Option<&str> {
    doc.as_ref().map(crate::json::JsonDoc::text)
}
