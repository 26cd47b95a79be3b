//! Outbound HTTP for agents, denied by default: the host-pattern grammar of grants and of
//! the operator's ceiling ([`HostPattern`]), the refusal of non-public addresses after DNS
//! ([`network`]), the host-wide client every agent request goes through ([`Outbound`]: pooled
//! connections, a bound on concurrent requests per host), and the record of one request
//! ([`HttpCall`]).
//!
//! It does not decide what one execution may do (the sandbox's `wasi:http` hooks ask it,
//! with the step's grants and limits), and it knows nothing of workflows or the database.

mod grants;
pub mod network;

pub use grants::{Destination, HostPattern, HostPatterns, PatternError};

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Host-wide settings of outbound HTTP (`braid run` and `braid serve` flags).
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The most any workflow may grant (`--allow-outbound`); every host by default.
    pub ceiling: HostPatterns,
    /// Whether agents may reach private, loopback and link-local addresses
    /// (`--allow-private-network`).
    pub allow_private_network: bool,
    /// Requests per execution (`--max-http-requests`).
    pub max_requests: u32,
    /// Bytes of one response body (`--max-http-response-bytes`); beyond it the body stream
    /// fails for the guest. Request bodies are held to the same cap.
    pub max_body_bytes: u64,
    /// Requests in flight to one `scheme://host:port` at once, host-wide; more wait.
    pub max_connections_per_host: usize,
}

/// Requests per execution unless the host says otherwise.
pub const DEFAULT_MAX_REQUESTS: u32 = 100;
/// Response bytes per request unless the host says otherwise: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;
/// Requests in flight to one origin, host-wide.
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: usize = 64;

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            ceiling: HostPatterns::any(),
            allow_private_network: false,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections_per_host: DEFAULT_MAX_CONNECTIONS_PER_HOST,
        }
    }
}

/// What one request of an execution did. No query string, no headers, no bodies: those
/// can carry secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The response's status, when one came.
    pub status: Option<u16>,
    /// Why there was no response, or why its body failed.
    pub error: Option<String>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// From the request to the end of its response body (or its failure).
    pub duration_us: u64,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// Why the outbound client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("could not build the outbound HTTP client: {0}")]
pub struct ClientError(#[source] rustls::Error);

/// The connector: TLS (or plain HTTP) over TCP to addresses the guarded resolver gave.
type Connector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector<network::GuardedResolver>>;

/// The client every agent request goes through.
pub(crate) type Client = hyper_util::client::legacy::Client<Connector, http_body_util::Full<bytes::Bytes>>;

/// The host-wide outbound client: one connection pool for every agent, a resolver that
/// refuses non-public addresses unless allowed, and a bound on requests per origin. It
/// follows no redirects (a redirect would go where no grant was checked: the guest sees the
/// 3xx) and uses no proxy.
pub struct Outbound {
    config: OutboundConfig,
    client: Client,
    per_origin: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Outbound {
    pub fn new(config: OutboundConfig) -> Result<Outbound, ClientError> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(ClientError)?
            .with_root_certificates(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() })
            .with_no_client_auth();
        let mut http =
            hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(network::GuardedResolver {
                allow_private: config.allow_private_network,
            });
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector);
        Ok(Outbound { config, client, per_origin: Mutex::new(HashMap::new()) })
    }

    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The bound on requests in flight to `origin`.
    pub(crate) fn origin_slots(&self, origin: &str) -> Arc<Semaphore> {
        let mut map = self.per_origin.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(origin.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_connections_per_host)))
            .clone()
    }
}
