//! `braid migrate [--revert]`: apply (or revert) the database migrations. Other commands
//! apply pending migrations themselves; this one is for doing it ahead of time, or undoing.

use super::{DatabaseArgs, Status};
use crate::store::Store;
use clap::Args;

#[derive(Debug, Args)]
pub struct MigrateCommand {
    /// Revert every migration instead (drops Braid's tables and their data).
    #[arg(long)]
    revert: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

impl MigrateCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let store = Store::open_unmigrated(&self.database.database_url).await?;
            if self.revert {
                store.revert().await?;
                println!("reverted all migrations on {}", self.database.database_url);
            } else {
                store.migrate().await?;
                println!("migrations applied on {}", self.database.database_url);
            }
            store.close().await?;
            Ok(Status::Succeeded)
        })
    }
}
