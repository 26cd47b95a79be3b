//! Host patterns: what a workflow grants (`allowed_hosts`) and what the operator allows at
//! most (`--allow-outbound`), in Spin's grammar: `scheme://host[:port]`, where `*` stands for
//! a whole part, `*.domain` for the domain's subdomains (not the domain itself), the host may
//! be a CIDR range (`10.0.0.0/8`, `[fd00::]/8`), and the port a number, a range (`8000-8999`)
//! or `*`; no port means the scheme's default (http 80, https 443). Paths, a bare `*` and a
//! missing scheme are refused.
//!
//! Matching a request and checking that a grant lies within the ceiling live here; resolving
//! names and refusing private addresses do not (see `network`).

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// One parsed `scheme://host[:port]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
    scheme: SchemePart,
    host: HostPart,
    port: PortPart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemePart {
    Any,
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPart {
    Any,
    /// `*.domain`: any name ending in `.domain`.
    Subdomains(String),
    /// One name, lower-cased.
    Name(String),
    /// An address or a range of them; matches requests that name an address literally.
    Range(IpNet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPart {
    Any,
    /// No port written: the request's scheme's default.
    SchemeDefault,
    Between(u16, u16),
}

/// Why an entry is not a host pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a host pattern: {reason} (expected scheme://host[:port], e.g. \"https://api.example.com\")")]
pub struct PatternError {
    pub entry: String,
    pub reason: String,
}

/// Where a request goes, as the grants see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub https: bool,
    /// Lower-cased; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// Where a request URI goes; `None` for a scheme other than http and https, or no host.
    pub fn of(uri: &http::Uri) -> Option<Destination> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        let port = uri.port_u16().unwrap_or(default_port(https));
        Some(Destination { https, host, port })
    }

    /// `scheme://host:port`, the form a grant for exactly this destination takes.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("{scheme}://[{}]:{}", self.host, self.port),
            _ => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }
}

fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

impl HostPattern {
    /// Parses one entry.
    pub fn parse(entry: &str) -> Result<HostPattern, PatternError> {
        let fail = |reason: &str| PatternError { entry: entry.to_owned(), reason: reason.to_owned() };
        let text = entry.trim();
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text == "*" {
            return Err(fail("a bare \"*\" is not allowed; write \"*://*:*\" to allow every host"));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(fail("the scheme is missing"));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => SchemePart::Any,
            "http" => SchemePart::Http,
            "https" => SchemePart::Https,
            other => return Err(fail(&format!("the scheme {other:?} is not http, https or *"))),
        };
        if rest.is_empty() {
            return Err(fail("the host is missing"));
        }
        if rest.contains(['?', '#', '@']) {
            return Err(fail("only scheme, host and port may be given"));
        }
        // The host: a bracketed IPv6 address, or everything up to the port's colon.
        let (host, prefix, port) = if let Some(inner) = rest.strip_prefix('[') {
            let Some((address, after)) = inner.split_once(']') else {
                return Err(fail("an IPv6 address misses its closing \"]\""));
            };
            let (prefix, port) = split_prefix_and_port(after).map_err(|reason| fail(&reason))?;
            (address.to_owned(), prefix, port)
        } else {
            let (host_and_prefix, port) = match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            let (host, prefix) = match host_and_prefix.split_once('/') {
                Some((host, prefix)) => (host, Some(prefix)),
                None => (host_and_prefix, None),
            };
            (host.to_owned(), prefix.map(str::to_owned), port.map(str::to_owned))
        };
        let host = parse_host(&host.to_ascii_lowercase(), prefix.as_deref()).map_err(|reason| fail(&reason))?;
        let port = match port.as_deref() {
            None => PortPart::SchemeDefault,
            Some("*") => PortPart::Any,
            Some(port) if port.contains('/') => return Err(fail("a path is not allowed")),
            Some(port) => match port.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (parse_port(low, &fail)?, parse_port(high, &fail)?);
                    if low > high {
                        return Err(fail("the port range is empty"));
                    }
                    PortPart::Between(low, high)
                }
                None => {
                    let port = parse_port(port, &fail)?;
                    PortPart::Between(port, port)
                }
            },
        };
        Ok(HostPattern { text: text.to_owned(), scheme, host, port })
    }

    /// Whether a request to `to` is allowed by this pattern.
    pub fn matches(&self, to: &Destination) -> bool {
        let scheme = match self.scheme {
            SchemePart::Any => true,
            SchemePart::Http => !to.https,
            SchemePart::Https => to.https,
        };
        let host = match &self.host {
            HostPart::Any => true,
            HostPart::Subdomains(domain) => is_subdomain(&to.host, domain),
            HostPart::Name(name) => match (name.parse::<IpAddr>(), to.host.parse::<IpAddr>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => *name == to.host,
            },
            HostPart::Range(range) => to.host.parse::<IpAddr>().is_ok_and(|address| range.contains(&address)),
        };
        let port = match self.port {
            PortPart::Any => true,
            PortPart::SchemeDefault => to.port == default_port(to.https),
            PortPart::Between(low, high) => (low..=high).contains(&to.port),
        };
        scheme && host && port
    }

    /// Whether every request this pattern allows is also allowed by `ceiling`.
    pub fn within(&self, ceiling: &HostPattern) -> bool {
        let scheme = ceiling.scheme == SchemePart::Any || ceiling.scheme == self.scheme;
        let host = match (&ceiling.host, &self.host) {
            (HostPart::Any, _) => true,
            (HostPart::Subdomains(outer), HostPart::Subdomains(inner)) => inner == outer || is_subdomain(inner, outer),
            (HostPart::Subdomains(outer), HostPart::Name(name)) => is_subdomain(name, outer),
            (HostPart::Name(outer), HostPart::Name(inner)) => outer == inner,
            (HostPart::Range(outer), HostPart::Range(inner)) => outer.contains(inner),
            (HostPart::Range(outer), HostPart::Name(name)) => {
                name.parse::<IpAddr>().is_ok_and(|address| outer.contains(&address))
            }
            _ => false,
        };
        // The ports a pattern allows, per scheme it allows.
        let ports = |pattern: &HostPattern, https: bool| match pattern.port {
            PortPart::Any => (0, u16::MAX),
            PortPart::SchemeDefault => (default_port(https), default_port(https)),
            PortPart::Between(low, high) => (low, high),
        };
        let schemes: &[bool] = match self.scheme {
            SchemePart::Any => &[false, true],
            SchemePart::Http => &[false],
            SchemePart::Https => &[true],
        };
        let port = schemes.iter().all(|&https| {
            let (inner, outer) = (ports(self, https), ports(ceiling, https));
            outer.0 <= inner.0 && inner.1 <= outer.1
        });
        scheme && host && port
    }

    /// The entry as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_subdomain(host: &str, domain: &str) -> bool {
    host.len() > domain.len() + 1 && host.ends_with(domain) && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
}

fn split_prefix_and_port(after: &str) -> Result<(Option<String>, Option<String>), String> {
    let (prefix, port) = match after.split_once(':') {
        Some((prefix, port)) => (prefix, Some(port.to_owned())),
        None => (after, None),
    };
    match prefix {
        "" => Ok((None, port)),
        prefix => match prefix.strip_prefix('/') {
            Some(length) => Ok((Some(length.to_owned()), port)),
            None => Err(format!("unexpected {prefix:?} after the IPv6 address")),
        },
    }
}

fn parse_host(host: &str, prefix: Option<&str>) -> Result<HostPart, String> {
    if let Some(prefix) = prefix {
        let address: IpAddr = host.parse().map_err(|_| "a path is not allowed".to_owned())?;
        let length: u8 =
            prefix.parse().map_err(|_| format!("{prefix:?} is not a prefix length (a path is not allowed)"))?;
        let range = IpNet::new(address, length).map_err(|_| format!("/{length} is too long a prefix for {address}"))?;
        return Ok(HostPart::Range(range.trunc()));
    }
    if host == "*" {
        return Ok(HostPart::Any);
    }
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(HostPart::Name(address.to_string()));
    }
    let (name, subdomains) = match host.strip_prefix("*.") {
        Some(domain) => (domain, true),
        None => (host, false),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(if name.contains('*') {
            "\"*\" may stand only for a whole host or its first label (\"*.example.com\")".to_owned()
        } else {
            format!("{host:?} is not a host name")
        });
    }
    Ok(if subdomains { HostPart::Subdomains(name.to_owned()) } else { HostPart::Name(name.to_owned()) })
}

fn parse_port(text: &str, fail: &impl Fn(&str) -> PatternError) -> Result<u16, PatternError> {
    text.parse::<u16>().map_err(|_| fail(&format!("{text:?} is not a port")))
}

/// A list of patterns: a request is allowed when any of them matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPatterns(Vec<HostPattern>);

impl HostPatterns {
    /// Parses every entry, reporting every bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<HostPatterns, Vec<PatternError>> {
        let (good, bad): (Vec<_>, Vec<_>) =
            entries.iter().map(|e| HostPattern::parse(e.as_ref())).partition(Result::is_ok);
        if bad.is_empty() {
            Ok(HostPatterns(good.into_iter().map(Result::unwrap).collect()))
        } else {
            Err(bad.into_iter().map(|e| e.unwrap_err()).collect())
        }
    }

    /// `*://*:*`: every host (the default ceiling; private addresses are still refused
    /// unless the host allows them).
    pub fn any() -> HostPatterns {
        HostPatterns(vec![HostPattern::parse("*://*:*").expect("a valid pattern")])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &HostPattern> {
        self.0.iter()
    }

    pub fn allows(&self, to: &Destination) -> bool {
        self.0.iter().any(|pattern| pattern.matches(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(url: &str) -> Destination {
        Destination::of(&url.parse().unwrap()).unwrap()
    }

    fn allows(pattern: &str, url: &str) -> bool {
        HostPattern::parse(pattern).unwrap().matches(&to(url))
    }

    #[test]
    fn patterns_match_as_spin_defines_them() {
        assert!(allows("https://api.example.com", "https://api.example.com"));
        assert!(allows("https://api.example.com", "https://API.example.com:443"));
        assert!(!allows("https://api.example.com", "http://api.example.com"));
        assert!(!allows("https://api.example.com", "https://api.example.com:8443"));
        assert!(allows("https://api.example.com:8443", "https://api.example.com:8443"));
        assert!(allows("https://*.example.org", "https://a.example.org"));
        assert!(allows("https://*.example.org", "https://a.b.example.org"));
        assert!(!allows("https://*.example.org", "https://example.org"));
        assert!(!allows("https://*.example.org", "https://badexample.org"));
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.1:8081"));
        assert!(allows("http://127.0.0.1:8000-8100", "http://127.0.0.1:8081"));
        assert!(allows("*://*:*", "http://10.0.0.1:1"));
        assert!(allows("http://10.0.0.0/8:*", "http://10.1.2.3:99"));
        assert!(!allows("http://10.0.0.0/8:*", "http://11.1.2.3:99"));
        assert!(allows("http://[::1]:8080", "http://[::1]:8080"));
        assert!(allows("*://example.com", "http://example.com"));
        assert!(allows("*://example.com", "https://example.com"));
        assert!(!allows("*://example.com", "https://example.com:80"));
    }

    #[test]
    fn bad_entries_are_named_with_their_reason() {
        for (entry, reason) in [
            ("", "empty"),
            ("*", "bare"),
            ("api.example.com", "scheme is missing"),
            ("https://api.example.com/v1", "path"),
            ("https://api.example.com:443/v1", "path"),
            ("ftp://x.com", "not http, https"),
            ("https://a.*.com", "whole host"),
            ("https://x.com:99999", "not a port"),
            ("https://x.com:9-1", "empty"),
            ("https://", "host is missing"),
            ("https://user@x.com", "only scheme"),
        ] {
            let err = HostPattern::parse(entry).unwrap_err();
            assert!(err.to_string().contains(reason), "{entry:?}: {err}");
            assert_eq!(err.entry, entry);
        }
    }

    #[test]
    fn a_grant_lies_within_a_ceiling_only_when_the_ceiling_allows_all_it_allows() {
        let within = |grant: &str, ceiling: &str| {
            HostPattern::parse(grant).unwrap().within(&HostPattern::parse(ceiling).unwrap())
        };
        assert!(within("https://api.example.com", "*://*:*"));
        assert!(within("https://api.example.com", "https://*.example.com"));
        assert!(within("https://*.a.example.com", "https://*.example.com"));
        assert!(!within("https://example.com", "https://*.example.com"));
        assert!(!within("https://api.example.com:8443", "https://api.example.com"));
        assert!(within("https://api.example.com", "https://api.example.com:443"));
        assert!(!within("*://api.example.com", "https://api.example.com"));
        assert!(within("http://10.1.0.0/16:80", "http://10.0.0.0/8"));
        assert!(within("http://10.1.2.3", "http://10.0.0.0/8"));
        assert!(!within("http://*:80", "http://10.0.0.0/8"));
        assert!(within("http://x.com:8001-8002", "http://x.com:8000-8999"));
        assert!(!within("http://x.com:*", "http://x.com:8000-8999"));
    }
}
