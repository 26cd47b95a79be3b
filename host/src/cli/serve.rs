//! `braid serve`: the HTTP API, with deploys, runs and metrics (see [`crate::api`]), beside
//! a host that executes runs; `braid worker`: the same host without the API.

use super::{DatabaseArgs, HostArgs, RegistryArgs, Status};
use crate::api::{self, AppState};
use crate::cluster::Runner;
use crate::engine::Engine;
use crate::registry::Registry;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::{HostRole, Store};
use anyhow::{Context as _, bail};
use clap::Args;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ServeCommand {
    /// Address to listen on. Anything beyond loopback requires BRAID_API_TOKEN.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Require a bearer token on `GET /metrics`: the API token (BRAID_API_TOKEN) when given
    /// without a value, or TOKEN, for a scraper that should not hold the API token.
    #[arg(long, value_name = "TOKEN", num_args = 0..=1, default_missing_value = "")]
    metrics_token: Option<String>,
    #[command(flatten)]
    process: HostProcessArgs,
}

/// `braid worker`: a host without the HTTP API, for machines that only add capacity.
#[derive(Debug, Args)]
pub struct WorkerCommand {
    #[command(flatten)]
    process: HostProcessArgs,
}

/// What every long-running host (`serve`, `worker`) is started with.
#[derive(Debug, Args)]
pub struct HostProcessArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    host: HostArgs,
    /// Most runs this host executes at once; more accepted runs wait in the database
    /// (`pending`) for a host with room. Default: 64 per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_active_runs: Option<u64>,
    /// On SIGTERM or Ctrl-C, how long running steps may take to finish before they are
    /// interrupted (and their runs left to resume at the next start).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    grace_period_ms: u64,
    /// Most agent instances alive at once (the instance pool's size).
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_instances: u32,
}

/// The HTTP API a `serve` host runs beside its runner.
struct ApiSettings {
    listen: SocketAddr,
    token: Option<String>,
    metrics_token: Option<String>,
}

impl ServeCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let token = std::env::var("BRAID_API_TOKEN").ok();
        if let Some(token) = &token {
            api::check_token("BRAID_API_TOKEN", token).map_err(anyhow::Error::msg)?;
        }
        let metrics_token = match self.metrics_token.as_deref() {
            None => None,
            Some("") => Some(token.clone().context(
                "--metrics-token without a value requires BRAID_API_TOKEN (or give the metrics token itself)",
            )?),
            Some(own) => {
                api::check_token("--metrics-token", own).map_err(anyhow::Error::msg)?;
                Some(own.to_owned())
            }
        };
        if token.is_none() && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without a token: set BRAID_API_TOKEN (every /v1 request must then send \
                 `Authorization: Bearer <token>`), or listen on a loopback address such as 127.0.0.1",
                self.listen
            );
        }
        self.process.run(HostRole::Serve, Some(ApiSettings { listen: self.listen, token, metrics_token }))
    }
}

impl WorkerCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        self.process.run(HostRole::Worker, None)
    }
}

impl HostProcessArgs {
    /// Runs a host of `role` until SIGTERM or Ctrl-C — with the HTTP API when `api` is
    /// given — then drains it.
    fn run(self, role: HostRole, api: Option<ApiSettings>) -> anyhow::Result<Status> {
        let sandbox = Arc::new(Sandbox::new(
            self.host
                .sandbox_config(SandboxConfig { max_instances: self.max_instances, ..SandboxConfig::default() })?,
        )?);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async move {
            let store = Store::open(&self.database.database_url).await?;
            let registry = Arc::new(Registry::new(store.clone(), sandbox.clone(), &self.registry.cache_dir));
            let max_active_runs = self.max_active_runs.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let config = self.host.config(role, max_active_runs)?;
            let runner = Runner::new(Engine::new(sandbox.clone(), store.recorder().clone()), registry.clone(), config);
            let stop = CancellationToken::new();
            let serve = match api {
                Some(api) => {
                    let listener = tokio::net::TcpListener::bind(api.listen)
                        .await
                        .with_context(|| format!("cannot listen on {}", api.listen))?;
                    let address = listener.local_addr()?;
                    let state = AppState {
                        registry,
                        runner: runner.clone(),
                        sandbox,
                        token: api.token.map(Arc::from),
                        metrics_token: api.metrics_token.map(Arc::from),
                    };
                    // Fully up (migrated, listening): only now may this host claim runs,
                    // unfinished ones of hosts that died included.
                    runner.start_host().await?;
                    println!("braid listening on http://{address}");
                    // Stop accepting and drain runs at the same time: a `?wait=true` request
                    // only ends once its run has finished or been interrupted.
                    let server = axum::serve(listener, api::router(state))
                        .with_graceful_shutdown(stop.clone().cancelled_owned());
                    Some(server)
                }
                None => {
                    runner.start_host().await?;
                    println!("braid worker up");
                    None
                }
            };
            println!("host {}", runner.config().host_id);
            std::io::stdout().flush()?;
            tokio::spawn(signal_stop(stop.clone()));
            let drain = async {
                stop.cancelled().await;
                runner.shutdown(Duration::from_millis(self.grace_period_ms)).await;
            };
            let served = async {
                match serve {
                    Some(server) => server.await,
                    None => Ok(()),
                }
            };
            let (served, ()) = tokio::join!(served, drain);
            served?;
            if let Some(telemetry) = runner.config().telemetry.clone() {
                let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
            }
            store.close().await?;
            println!("braid stopped");
            Ok(Status::Succeeded)
        })
    }
}

/// Cancels `stop` on SIGTERM or Ctrl-C.
async fn signal_stop(stop: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                stop.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    stop.cancel();
}
