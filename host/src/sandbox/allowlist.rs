//! The outbound HTTP allowlist: deny by default.
//!
//! Forms: `*` (any public host), `*.example.com` (subdomains), `host` (any
//! port), `host:port`, and URL prefixes such as `https://api.example.com/v1/`.
//! Loopback and private IP literals (and `localhost`) are reached only through
//! a rule that names them: `*` and `*.x` never match them, which keeps a
//! plugin with a broad allowlist from probing the machine it runs on. The
//! same holds for names that *resolve* to such addresses: a request allowed
//! only by a wildcard is [`Reach::Public`], and the HTTP client then refuses
//! internal addresses after resolving (see `sandbox::http`), so a public
//! name pointed at 127.0.0.1 or 10.0.0.5 gets nowhere. A rule that names
//! the host (`gotify.lan`, `https://ntfy.lan/`) is the operator saying that
//! this host is meant, wherever it resolves: [`Reach::Any`].

use std::net::IpAddr;

use http::Uri;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Any,
    Subdomains(String),
    Host {
        host: String,
        port: Option<u16>,
    },
    Prefix {
        scheme: String,
        host: String,
        port: u16,
        path: String,
    },
}

/// Which addresses a permitted request may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Allowed by a wildcard: public addresses only.
    Public,
    /// Allowed by a rule that names the host: wherever it resolves.
    Any,
}

/// A parsed allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<Rule>,
}

/// An allowlist entry that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allowed_hosts entry {entry:?}: {reason}")]
pub struct AllowListError {
    entry: String,
    reason: &'static str,
}

impl AllowList {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowListError> {
        let rules = entries
            .iter()
            .map(|e| parse_rule(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(AllowList { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether a request to `uri` is allowed.
    pub fn permits(&self, uri: &Uri) -> bool {
        self.reach(uri).is_some()
    }

    /// Whether a request to `uri` is allowed, and to which addresses.
    pub fn reach(&self, uri: &Uri) -> Option<Reach> {
        let host = uri.host()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let internal = is_internal(&host);
        let named = self.rules.iter().any(|rule| match rule {
            Rule::Host { host: h, port: p } => *h == host && p.is_none_or(|p| p == port),
            Rule::Prefix {
                scheme,
                host: h,
                port: p,
                path,
            } => {
                uri.scheme_str() == Some(scheme.as_str())
                    && *h == host
                    && *p == port
                    && uri.path().starts_with(path.as_str())
            }
            Rule::Any | Rule::Subdomains(_) => false,
        });
        if named {
            return Some(Reach::Any);
        }
        let wildcard = !internal
            && self.rules.iter().any(|rule| match rule {
                Rule::Any => true,
                Rule::Subdomains(suffix) => host.ends_with(suffix.as_str()),
                Rule::Host { .. } | Rule::Prefix { .. } => false,
            });
        wildcard.then_some(Reach::Public)
    }
}

fn parse_rule(entry: &str) -> Result<Rule, AllowListError> {
    let err = |reason| AllowListError {
        entry: entry.to_string(),
        reason,
    };
    let entry_lc = entry.trim().to_ascii_lowercase();
    if entry_lc.is_empty() {
        return Err(err("empty entry"));
    }
    if entry_lc == "*" {
        return Ok(Rule::Any);
    }
    if let Some(suffix) = entry_lc.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains(['*', '/', ':']) {
            return Err(err("a wildcard must look like *.example.com"));
        }
        return Ok(Rule::Subdomains(format!(".{suffix}")));
    }
    if entry_lc.contains("://") {
        let uri: Uri = entry_lc.parse().map_err(|_| err("not a valid URL"))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| err("a URL needs a scheme"))?
            .to_string();
        if scheme != "http" && scheme != "https" {
            return Err(err("only http and https URLs are allowed"));
        }
        let host = uri.host().ok_or_else(|| err("a URL needs a host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        return Ok(Rule::Prefix {
            scheme,
            host,
            port,
            path: uri.path().to_string(),
        });
    }
    if entry_lc.contains(['*', '/']) {
        return Err(err("use *, *.domain, host, host:port or a URL prefix"));
    }
    let (host, port) = split_host_port(&entry_lc).ok_or_else(|| err("invalid port"))?;
    Ok(Rule::Host { host, port })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(entry: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Some((host.to_string(), Some(port.parse().ok()?)))
        }
        _ => Some((entry.to_string(), None)),
    }
}

/// Loopback, private, link-local and unspecified addresses.
pub(crate) fn is_internal_ip(ip: IpAddr) -> bool {
    is_internal(&ip.to_string())
}

/// Loopback, private, link-local and unspecified addresses, and `localhost`.
fn is_internal(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(&v4.to_string()))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(rules: &[&str], url: &str) -> bool {
        AllowList::parse(rules)
            .unwrap()
            .permits(&url.parse().unwrap())
    }

    #[test]
    fn denies_by_default() {
        assert!(!allows(&[], "https://hooks.slack.com/x"));
    }

    #[test]
    fn matches_each_form() {
        assert!(allows(&["*"], "https://hooks.slack.com/x"));
        assert!(allows(&["*.slack.com"], "https://hooks.slack.com/x"));
        assert!(!allows(&["*.slack.com"], "https://slack.com.evil.io/x"));
        assert!(allows(
            &["hooks.slack.com"],
            "https://hooks.slack.com:8443/x"
        ));
        assert!(allows(
            &["hooks.slack.com:443"],
            "https://hooks.slack.com/x"
        ));
        assert!(!allows(
            &["hooks.slack.com:443"],
            "http://hooks.slack.com/x"
        ));
        assert!(allows(
            &["https://api.x.io/v1/"],
            "https://api.x.io/v1/send"
        ));
        assert!(!allows(
            &["https://api.x.io/v1/"],
            "https://api.x.io/v2/send"
        ));
        assert!(!allows(
            &["https://api.x.io/v1/"],
            "http://api.x.io/v1/send"
        ));
    }

    #[test]
    fn internal_addresses_need_an_explicit_rule() {
        assert!(!allows(&["*"], "http://127.0.0.1:8080/"));
        assert!(!allows(&["*"], "http://10.0.0.1/"));
        assert!(!allows(&["*"], "http://[::1]:80/"));
        assert!(!allows(&["*.localhost"], "http://a.localhost/"));
        assert!(allows(&["127.0.0.1:8080"], "http://127.0.0.1:8080/"));
        assert!(!allows(&["127.0.0.1:8080"], "http://127.0.0.1:8081/"));
        assert!(allows(&["127.0.0.1"], "http://127.0.0.1:9/"));
        assert!(allows(&["[::1]:80"], "http://[::1]/"));
    }

    #[test]
    fn rejects_malformed_entries() {
        assert!(AllowList::parse(&["host:notaport"]).is_err());
        assert!(AllowList::parse(&["*.*.x"]).is_err());
        assert!(AllowList::parse(&["ftp://x"]).is_err());
        assert!(AllowList::parse(&[""]).is_err());
    }
}
