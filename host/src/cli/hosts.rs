//! `braid hosts list`: the live hosts on a database, as `GET /v1/hosts` shows them.

use super::{DatabaseArgs, OutputFormat, Status};
use crate::store::Store;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Debug, Args)]
pub struct HostsCommand {
    #[command(subcommand)]
    action: HostsAction,
}

#[derive(Debug, Subcommand)]
enum HostsAction {
    /// The live hosts: role, last heartbeat, instance slots in use, runs owned, units
    /// taken from and offered to other hosts.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

impl HostsCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let HostsAction::List { database, output } = self.action;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let store = Store::open(&database.database_url).await?;
            let hosts = store.live_hosts().await?;
            store.close().await?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&json!({ "hosts": hosts }))?),
                OutputFormat::Text => {
                    if hosts.is_empty() {
                        println!("no live hosts");
                    }
                    for host in &hosts {
                        println!(
                            "{}  {}  heartbeat {}  slots {}/{}  runs {}  units taken {} offered {}",
                            host.host_id,
                            host.role.as_str(),
                            host.heartbeat_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            host.slots_in_use,
                            host.max_instances,
                            host.runs_owned,
                            host.units_taken,
                            host.units_offered
                        );
                    }
                }
            }
            Ok(Status::Succeeded)
        })
    }
}
