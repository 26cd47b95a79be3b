//! The host's grammar of outbound HTTP grants (what workflows write), without the client.

#[path = "../../host/src/outbound/grants.rs"]
mod grants;

pub use grants::*;
