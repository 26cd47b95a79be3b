//! Hosts and ownership. Every process that executes runs (`braid serve`, `braid run`,
//! `braid runs resume|redrive`) is a host with an id, and executes a run only while it
//! holds the run's lease: claimed atomically in the database (which bumps the run's fencing
//! epoch), renewed on a heartbeat, taken over by another host once it expires. Every write
//! a host makes for a run carries its epoch, and the database refuses a stale one, so a
//! host that lost a run can never overwrite the new owner's rows.
//!
//! [`Runner`] is a host's executor: it accepts runs, claims runs no host is executing
//! (woken by `LISTEN/NOTIFY` on Postgres, polling otherwise), bounds how many it executes
//! at once, renews its leases and drops the runs it lost. On Postgres, hosts also share
//! the units of wide fan-outs through the [`Exchange`], and every host keeps a row in
//! `hosts` with its heartbeat (`GET /v1/hosts`). The SQL lives in `store/`; the
//! engine knows nothing of leases beyond the epoch its writes carry.

mod exchange;
mod runner;

pub use exchange::Exchange;
pub use runner::{Runner, StartOptions, Started};

use std::time::Duration;

/// How a host takes part in ownership.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// This host's id, recorded as the owner of the runs it executes and on every step
    /// execution it runs.
    pub host_id: String,
    /// What kind of process it is: `serve` and `worker` hosts claim runs no host is
    /// executing and take other hosts' units; a `run` host drives the runs it is given.
    pub role: crate::store::HostRole,
    /// How long a lease lasts without renewal; renewed every third of it.
    pub lease: Duration,
    /// Most runs executed at once; more accepted runs wait in the database as `pending`.
    pub max_active_runs: usize,
    /// How often a host looks for claimable runs and cancel requests without being woken
    /// (the fallback for missed notifications, and the only way on SQLite).
    pub poll: Duration,
    /// What one run may take of this host.
    pub run_limits: crate::engine::RunLimits,
    /// The secrets steps may ask for.
    pub secrets: std::sync::Arc<crate::secrets::Secrets>,
    /// Where finished runs' traces go (OTLP), when the environment asks for it.
    pub telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
}

impl HostConfig {
    /// A host with the given id and the default lease, bound and poll interval.
    pub fn new(host_id: impl Into<String>) -> Self {
        HostConfig {
            host_id: host_id.into(),
            role: crate::store::HostRole::Serve,
            lease: DEFAULT_LEASE,
            max_active_runs: default_max_active_runs(),
            poll: Duration::from_millis(500),
            run_limits: crate::engine::RunLimits::default(),
            secrets: std::sync::Arc::default(),
            telemetry: None,
        }
    }
}

/// The default lease: `--lease-ms 15000`.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(15_000);

/// The default bound on runs executed at once: 64 per core. A run waiting on its agents
/// costs a few kilobytes; the instance pool bounds the work actually running.
pub fn default_max_active_runs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 64
}

/// `hostname-pid-random`: unique per process, readable in the records.
pub fn default_host_id() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    // The tail of a UUIDv7 is random.
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!("{hostname}-{}-{}", std::process::id(), &random[random.len() - 6..])
}
