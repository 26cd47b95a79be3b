//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! `migrations/` folders at compile time and does not watch them itself.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
