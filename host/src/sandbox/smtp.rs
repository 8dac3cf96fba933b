//! Outbound SMTP for plugins (`notifyhub:smtp/client`): the policy every
//! call passes, then pooled connections per relay.
//!
//! A plugin composes the message; the host only moves it. Each call is
//! checked the way an HTTP request is (`sandbox::http`): the relay's
//! `host:port` against the plugin's [`AllowList`] (a wildcard reaches public
//! addresses only: the name is resolved here, internal addresses dropped, and
//! the connection made to the address with the name kept for TLS), the
//! per-task request budget, the plugin's timeout around the whole exchange,
//! and bounds on recipients and size, all before a byte leaves the host.
//!
//! TLS is the default and the plugin cannot weaken it alone: `starttls` is
//! lettre's `Tls::Required` (a relay that does not offer STARTTLS is refused
//! before credentials are sent), `implicit-tls` wraps the connection from the
//! first byte, and `none` needs `[smtp] allow_plaintext = true` in the
//! manifest. Roots are the web PKI's plus the manifest's `ca_file`.
//!
//! Connections are reused: one lettre pool per (plugin, address, security,
//! credentials), kept in a bounded map shared by every store, so a burst of
//! notifications to one relay pays for TLS and AUTH once.
//!
//! Must never: log a password, reach a relay the allowlist refuses, or hold
//! the call past the plugin's deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{Address, AsyncTransport, Tokio1Executor, address::Envelope};

use super::allowlist::{AllowList, Reach, is_internal_ip};
use super::http::Transport;
use crate::bindings::smtp::{Relay, Reply, Security, SmtpError};
use crate::telemetry::attempt::in_attempt;
use crate::text::cap;

/// The largest message a plugin may hand over, in bytes. Notifications are
/// small; the bound keeps one call's copy across the guest boundary small
/// too (see `MAX_GUEST_TRANSFER_BYTES`).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// The most recipients one message may have.
pub const MAX_RECIPIENTS: usize = 100;

/// The longest reply or error text handed back to a plugin, in bytes.
const MAX_TEXT_BYTES: usize = 1024;

/// Relays with open pools at once; past it the map starts over, closing
/// idle connections (live sends hold their own handle and finish).
const MAX_POOLS: usize = 64;

/// Connections kept per relay.
const MAX_CONNECTIONS_PER_RELAY: u32 = 16;

/// What a plugin's manifest allows beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct SmtpPolicy {
    /// Relays may be reached without TLS.
    pub allow_plaintext: bool,
    /// Extra trusted roots (PEM), for a relay with a private CA.
    pub extra_roots: Option<Arc<[u8]>>,
}

impl SmtpPolicy {
    /// Checks that `pem` holds certificates, and only readable ones.
    pub fn check_roots(pem: &[u8]) -> Result<(), String> {
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err("no PEM certificate in it".into());
        }
        Certificate::from_pem(pem)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// How a connection is secured, as a pool tells connections apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Wrapping {
    ImplicitTls,
    Starttls,
    Plaintext,
}

impl From<Security> for Wrapping {
    fn from(security: Security) -> Self {
        match security {
            Security::ImplicitTls => Wrapping::ImplicitTls,
            Security::Starttls => Wrapping::Starttls,
            Security::None => Wrapping::Plaintext,
        }
    }
}

/// Which pool a call uses: everything a connection is built from, so a
/// plugin reloaded with another CA file or timeout gets fresh connections.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    plugin: Arc<str>,
    /// What is connected to: the relay's name, or the public address it
    /// resolved to when only a wildcard allows it.
    server: String,
    port: u16,
    /// The name the certificate must carry.
    domain: String,
    wrapping: Wrapping,
    credentials: Option<(String, String)>,
    roots: Option<Arc<[u8]>>,
    timeout: Duration,
}

type Mailer = AsyncSmtpTransport<Tokio1Executor>;

/// The pools, shared by every store of the sandbox.
#[derive(Default)]
pub struct SmtpPools {
    pools: Mutex<HashMap<PoolKey, Mailer>>,
}

impl SmtpPools {
    fn get(&self, key: PoolKey) -> Result<Mailer, String> {
        let mut pools = self.pools.lock().expect("never poisoned");
        if let Some(mailer) = pools.get(&key) {
            return Ok(mailer.clone());
        }
        let tls = || -> Result<TlsParameters, String> {
            let mut params = TlsParameters::builder(key.domain.clone());
            if let Some(pem) = &key.roots {
                params = params.add_root_certificate(
                    Certificate::from_pem(pem).map_err(|e| format!("ca_file: {e}"))?,
                );
            }
            params.build_rustls().map_err(|e| e.to_string())
        };
        let tls = match key.wrapping {
            Wrapping::ImplicitTls => Tls::Wrapper(tls()?),
            Wrapping::Starttls => Tls::Required(tls()?),
            Wrapping::Plaintext => Tls::None,
        };
        let mut builder = Mailer::builder_dangerous(key.server.clone())
            .port(key.port)
            .tls(tls)
            .timeout(Some(key.timeout))
            .pool_config(
                PoolConfig::new()
                    .max_size(MAX_CONNECTIONS_PER_RELAY)
                    .idle_timeout(Duration::from_secs(60)),
            );
        if let Some((user, password)) = &key.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let mailer = builder.build();
        if pools.len() >= MAX_POOLS {
            pools.clear();
        }
        pools.insert(key, mailer.clone());
        Ok(mailer)
    }
}

/// Per-call SMTP policy: the `notifyhub:smtp/client` host of one store.
pub struct OutboundSmtp {
    transport: Transport,
    pools: Arc<SmtpPools>,
    allow: Arc<AllowList>,
    policy: SmtpPolicy,
    plugin: Arc<str>,
    task: Option<String>,
    timeout: Duration,
    max_sends: u32,
    sends_left: u32,
}

impl OutboundSmtp {
    pub fn new(
        transport: Transport,
        pools: Arc<SmtpPools>,
        allow: Arc<AllowList>,
        policy: SmtpPolicy,
        plugin: Arc<str>,
        timeout: Duration,
        max_sends: u32,
    ) -> Self {
        OutboundSmtp {
            transport,
            pools,
            allow,
            policy,
            plugin,
            task: None,
            timeout,
            max_sends,
            sends_left: max_sends,
        }
    }

    /// Resets the per-task budget before a call for `task`.
    pub(crate) fn begin_task(&mut self, task: Option<String>) {
        self.task = task;
        self.sends_left = self.max_sends;
    }

    /// One `send` from the guest.
    pub async fn send(
        &mut self,
        relay: Relay,
        envelope: crate::bindings::smtp::Envelope,
        message: Vec<u8>,
    ) -> Result<Reply, SmtpError> {
        let checked = self.check(&relay, &envelope, &message)?;
        let reach = match (&self.transport, checked.reach) {
            // `notifyhub try` sends nothing: it shows the dialogue, and
            // flags a relay the daemon would refuse.
            (Transport::Recorder(recorder), _) => {
                return recorder.mail(&relay, &envelope, message);
            }
            (_, None) => return Err(self.deny(&relay, "relay not in allowed_hosts")),
            (_, Some(reach)) => reach,
        };
        let exchange = async {
            let server = match reach {
                Reach::Any => relay.host.clone(),
                Reach::Public => public_address(&relay).await?,
            };
            let key = PoolKey {
                plugin: self.plugin.clone(),
                server,
                port: relay.port,
                domain: relay.host.clone(),
                wrapping: relay.security.into(),
                credentials: relay
                    .credentials
                    .as_ref()
                    .map(|c| (c.username.clone(), c.password.clone())),
                roots: self.policy.extra_roots.clone(),
                timeout: self.timeout,
            };
            let mailer = self.pools.get(key).map_err(SmtpError::Failed)?;
            mailer
                .send_raw(&checked.envelope, &message)
                .await
                .map_err(|e| classify(&e, &relay))
        };
        // The whole exchange, name resolution included, within the bound.
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(SmtpError::Failed(format!(
                "no answer from {}:{} within {:?}",
                relay.host, relay.port, self.timeout
            ))),
            Ok(Ok(response)) => Ok(Reply {
                code: u16::from(response.code()),
                text: bounded(response.message().collect::<Vec<_>>().join("\n")),
            }),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Everything decided before connecting.
    fn check(
        &mut self,
        relay: &Relay,
        envelope: &crate::bindings::smtp::Envelope,
        message: &[u8],
    ) -> Result<Checked, SmtpError> {
        if relay.host.is_empty()
            || relay.host.len() > 253
            || relay
                .host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(SmtpError::Invalid(format!(
                "relay host {:?} is not a host name or address",
                bounded(relay.host.clone())
            )));
        }
        if relay.port == 0 {
            return Err(SmtpError::Invalid("relay port 0".into()));
        }
        if envelope.recipients.is_empty() || envelope.recipients.len() > MAX_RECIPIENTS {
            return Err(SmtpError::Invalid(format!(
                "a message needs 1 to {MAX_RECIPIENTS} recipients, not {}",
                envelope.recipients.len()
            )));
        }
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(SmtpError::Invalid(format!(
                "the message is {} bytes; the host sends at most {MAX_MESSAGE_BYTES}",
                message.len()
            )));
        }
        let address = |a: &str| {
            a.parse::<Address>().map_err(|e| {
                SmtpError::Invalid(format!(
                    "{:?} is not an e-mail address: {e}",
                    bounded(a.into())
                ))
            })
        };
        let sender = envelope.sender.as_deref().map(address).transpose()?;
        let recipients = envelope
            .recipients
            .iter()
            .map(|a| address(a))
            .collect::<Result<Vec<_>, _>>()?;
        let envelope = Envelope::new(sender, recipients)
            .map_err(|e| SmtpError::Invalid(format!("envelope: {e}")))?;

        let reach = relay_uri(&relay.host, relay.port).and_then(|uri| self.allow.reach(&uri));
        if matches!(relay.security, Security::None) && !self.policy.allow_plaintext {
            return Err(self.deny(
                relay,
                "plaintext SMTP is refused unless the manifest sets [smtp] allow_plaintext = true",
            ));
        }
        if self.sends_left == 0 {
            return Err(self.deny(relay, "request budget for this task used up"));
        }
        self.sends_left -= 1;
        Ok(Checked { reach, envelope })
    }

    fn deny(&self, relay: &Relay, reason: &str) -> SmtpError {
        in_attempt(|| {
            tracing::warn!(
                plugin = %self.plugin,
                task = self.task.as_deref().unwrap_or("-"),
                relay = %format!("{}:{}", relay.host, relay.port),
                "outbound SMTP denied: {reason}"
            )
        });
        SmtpError::Denied(reason.to_string())
    }
}

struct Checked {
    /// `None`: the allowlist refuses the relay.
    reach: Option<Reach>,
    envelope: Envelope,
}

/// A relay as the allowlist sees it: `smtp://host:port/`.
pub fn relay_uri(host: &str, port: u16) -> Option<http::Uri> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("smtp://{host}:{port}/").parse().ok()
}

/// A public address of the relay, for a relay allowed only by a wildcard.
async fn public_address(relay: &Relay) -> Result<String, SmtpError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((relay.host.as_str(), relay.port))
        .await
        .map_err(|e| SmtpError::Failed(format!("cannot resolve {}: {e}", relay.host)))?
        .collect();
    found
        .iter()
        .find(|a| !is_internal_ip(a.ip()))
        .map(|a| a.ip().to_string())
        .ok_or_else(|| {
            SmtpError::Denied(format!(
                "{} resolves only to internal addresses and only a wildcard allows it \
                 (name it in allowed_hosts to allow it)",
                relay.host
            ))
        })
}

/// A lettre error as the plugin sees it: a reply when the relay gave one.
fn classify(error: &lettre::transport::smtp::Error, relay: &Relay) -> SmtpError {
    if let Some(code) = error.status() {
        let text = std::error::Error::source(error)
            .map(|s| s.to_string())
            .unwrap_or_default();
        return SmtpError::Rejected(Reply {
            code: u16::from(code),
            text: bounded(text),
        });
    }
    let what = if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    };
    SmtpError::Failed(bounded(format!("{}:{}: {what}", relay.host, relay.port)))
}

/// `text` cut to [`MAX_TEXT_BYTES`].
fn bounded(text: String) -> String {
    cap(text, MAX_TEXT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::smtp::Envelope as WitEnvelope;
    use crate::sandbox::recorder::{CannedAnswer, Recorder};

    fn outbound(allow: &[&str], plaintext: bool, budget: u32) -> OutboundSmtp {
        OutboundSmtp::new(
            Transport::Network(Arc::default()),
            Arc::default(),
            Arc::new(AllowList::parse(allow).unwrap()),
            SmtpPolicy {
                allow_plaintext: plaintext,
                extra_roots: None,
            },
            "test".into(),
            Duration::from_secs(1),
            budget,
        )
    }

    fn relay(host: &str, port: u16, security: Security) -> Relay {
        Relay {
            host: host.into(),
            port,
            security,
            credentials: None,
        }
    }

    fn envelope(recipients: &[&str]) -> WitEnvelope {
        WitEnvelope {
            sender: Some("a@example.org".into()),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn calls_are_refused_before_anything_is_sent() {
        let ok = relay("smtp.example.org", 587, Security::Starttls);
        let to = envelope(&["b@example.org"]);
        let mut smtp = outbound(&["smtp.example.org:587"], false, 8);
        assert!(smtp.check(&ok, &to, b"x").unwrap().reach.is_some());
        // Not named by the allowlist: no reach (the send denies it).
        let other = relay("smtp.example.org", 25, Security::Starttls);
        assert!(smtp.check(&other, &to, b"x").unwrap().reach.is_none());

        let invalid = |smtp: &mut OutboundSmtp, relay: &Relay, env: &WitEnvelope, size: usize| {
            matches!(
                smtp.check(relay, env, &vec![b'x'; size]),
                Err(SmtpError::Invalid(_))
            )
        };
        assert!(invalid(
            &mut smtp,
            &relay("", 587, Security::Starttls),
            &to,
            1
        ));
        assert!(invalid(
            &mut smtp,
            &relay("a b", 587, Security::Starttls),
            &to,
            1
        ));
        assert!(invalid(
            &mut smtp,
            &relay("h", 0, Security::Starttls),
            &to,
            1
        ));
        assert!(invalid(&mut smtp, &ok, &envelope(&[]), 1));
        let many: Vec<String> = (0..=MAX_RECIPIENTS)
            .map(|i| format!("r{i}@example.org"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(invalid(&mut smtp, &ok, &envelope(&many), 1));
        assert!(invalid(&mut smtp, &ok, &envelope(&["not an address"]), 1));
        assert!(invalid(&mut smtp, &ok, &to, MAX_MESSAGE_BYTES + 1));
        assert!(!invalid(&mut smtp, &ok, &to, MAX_MESSAGE_BYTES));
    }

    #[test]
    fn plaintext_needs_the_manifest_and_each_task_has_a_budget() {
        let plain = relay("127.0.0.1", 25, Security::None);
        let to = envelope(&["b@example.org"]);
        let mut strict = outbound(&["127.0.0.1:25"], false, 8);
        assert!(matches!(
            strict.check(&plain, &to, b"x"),
            Err(SmtpError::Denied(_))
        ));
        let mut lax = outbound(&["127.0.0.1:25"], true, 2);
        assert!(lax.check(&plain, &to, b"x").is_ok());
        assert!(lax.check(&plain, &to, b"x").is_ok());
        assert!(matches!(
            lax.check(&plain, &to, b"x"),
            Err(SmtpError::Denied(_))
        ));
        lax.begin_task(Some("next".into()));
        assert!(lax.check(&plain, &to, b"x").is_ok());
    }

    #[tokio::test]
    async fn a_recorder_keeps_the_message_and_answers_with_the_canned_code() {
        let recorder = Arc::new(Recorder::new(CannedAnswer {
            smtp_code: 451,
            ..CannedAnswer::default()
        }));
        let mut smtp = outbound(&[], false, 8);
        smtp.transport = Transport::Recorder(recorder.clone());
        let sent = smtp
            .send(
                relay("smtp.example.org", 587, Security::Starttls),
                envelope(&["b@example.org"]),
                b"Subject: x\r\n\r\nbody".to_vec(),
            )
            .await;
        assert!(matches!(
            sent,
            Err(SmtpError::Rejected(Reply { code: 451, .. }))
        ));
        let mails = recorder.mails();
        assert_eq!(mails.len(), 1);
        assert_eq!(
            (mails[0].host.as_str(), mails[0].port),
            ("smtp.example.org", 587)
        );
        assert_eq!(mails[0].recipients, ["b@example.org"]);
    }
}
