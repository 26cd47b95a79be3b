//! Which addresses an agent may reach once a name is resolved: private, loopback,
//! link-local and other non-public ranges are refused unless the host allows private
//! networks — checked on the resolved addresses (so a public name that resolves to
//! `169.254.169.254` is refused too) and on addresses written in the URL. The resolver here
//! is the one the outbound client connects with, so the checked address is the one used.

use hyper_util::client::legacy::connect::dns::Name;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why an address is not public, or `None` when it is.
pub fn non_public(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // `::ffff:127.0.0.1` is 127.0.0.1.
            Some(v4) => non_public_v4(v4),
            None => non_public_v6(v6),
        },
    }
}

fn non_public_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = address.octets();
    if address.is_loopback() {
        Some("a loopback address")
    } else if address.is_private() {
        Some("a private address")
    } else if address.is_link_local() {
        Some("a link-local address (cloud metadata endpoints live here)")
    } else if address.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if address.is_broadcast() || address.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else if a == 192 && b == 0 && address.octets()[2] == 0 {
        Some("an IETF protocol assignment address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("a benchmarking address")
    } else {
        None
    }
}

fn non_public_v6(address: Ipv6Addr) -> Option<&'static str> {
    let first = address.segments()[0];
    if address.is_loopback() {
        Some("a loopback address")
    } else if address.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique local (private) address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if address.is_multicast() {
        Some("a multicast address")
    } else if address.to_ipv4().is_some() && first == 0 {
        // IPv4-compatible (deprecated) addresses: judge the IPv4 address inside.
        address.to_ipv4().and_then(non_public_v4)
    } else {
        None
    }
}

/// A resolved name had no address an agent may reach.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses the host blocks ({address} is {why})")]
pub struct BlockedAddress {
    pub host: String,
    pub address: IpAddr,
    pub why: &'static str,
}

/// Resolves names with the system resolver and drops addresses that are not public
/// (unless `allow_private`); refuses a name that has no other.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

type Resolving = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut blocked = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| match non_public(address.ip()) {
                    Some(why) if !allow_private => {
                        blocked.get_or_insert((address.ip(), why));
                        false
                    }
                    _ => true,
                })
                .collect();
            match (allowed.is_empty(), blocked) {
                (true, Some((address, why))) => Err(Box::new(BlockedAddress { host, address, why }) as BoxError),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_mapped_addresses_are_not_public() {
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
        ] {
            assert!(non_public(address.parse().unwrap()).is_some(), "{address} passed as public");
        }
        for address in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert_eq!(non_public(address.parse().unwrap()), None, "{address}");
        }
    }
}
