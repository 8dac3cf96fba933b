//! E-mail through the operator's own SMTP relay.
//!
//! The plugin composes the message; the host sends it through its SMTP
//! capability (`notifyhub:smtp/client`), which checks the relay against the
//! manifest's `allowed_hosts`, requires TLS and authenticates.
//!
//! The target is one or more recipient addresses, comma-separated (at most
//! 50). Config: `relay` (`host:port`), `security` (`starttls`, the default;
//! `tls` for implicit TLS, the default on port 465; `none`, which the host
//! refuses unless the manifest sets `[smtp] allow_plaintext = true`),
//! `username` and `password` (a secret) for AUTH, `from` (the sender
//! address) and optional `from_name`.
//!
//! The message: one subject line (the title, else the body's first line),
//! `text/plain` always, and for markdown and HTML a sanitized `text/html`
//! alternative; non-ASCII subjects and names are encoded (RFC 2047); `Date`
//! is set, and `Message-ID` is derived from the task id, so a retry of the
//! same task carries the same id and receivers can drop the duplicate.
//! Errors are classified by the relay's reply code (see the SDK's `smtp`).

use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use notifyhub_plugin_sdk::format::plain_body;
use notifyhub_plugin_sdk::smtp::{self, Credentials, Envelope, Relay, Security};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Receipt, SendError, config, config_key, mail, required_config,
};

const MAX_RECIPIENTS: usize = 50;

struct Smtp;

impl Plugin for Smtp {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "smtp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["smtp".into()],
            config_keys: vec![
                config_key("relay", true, false, "the SMTP relay, host:port"),
                config_key("security", false, false, "starttls (default), tls or none"),
                config_key("username", false, false, "user name for SMTP AUTH"),
                config_key("password", false, true, "password for SMTP AUTH"),
                config_key("from", true, false, "sender address"),
                config_key("from_name", false, false, "sender display name"),
            ],
            rate_limits: vec![],
            description: "E-mail through your own SMTP relay (STARTTLS or TLS, AUTH)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let relay = relay()?;
        let from = required_config("from")?;
        let sender: Mailbox = from
            .parse()
            .map_err(|e| SendError::invalid(format!("config `from` {from:?}: {e}")))?;
        let sender = Mailbox::new(config("from_name"), sender.email);
        let recipients =
            mail::recipients(&message.target, MAX_RECIPIENTS).map_err(SendError::invalid)?;
        let mut builder = lettre::Message::builder()
            .from(sender.clone())
            .subject(mail::subject(&message))
            .date_now()
            .message_id(Some(format!(
                "<{}@{}>",
                message.task_id,
                sender.email.domain()
            )));
        for recipient in &recipients {
            let to: Mailbox = recipient
                .parse()
                .map_err(|e| SendError::invalid(format!("recipient {recipient:?}: {e}")))?;
            builder = builder.to(to);
        }
        let plain = SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(plain_body(&message));
        let email = match mail::html_alternative(&message) {
            None => builder.singlepart(plain),
            Some(html) => builder.multipart(
                MultiPart::alternative()
                    .singlepart(plain)
                    .singlepart(SinglePart::html(html)),
            ),
        }
        .map_err(|e| SendError::invalid(format!("cannot compose the message: {e}")))?;
        let envelope = Envelope {
            sender: Some(sender.email.to_string()),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        };
        let reply = smtp::send(&relay, &envelope, &email.formatted())?;
        Ok(Receipt {
            provider_id: queue_id(&reply.text),
            status: format!("SMTP {} {}", reply.code, first_line(&reply.text)),
        })
    }
}

/// The relay from `relay`, `security`, `username` and `password`.
fn relay() -> Result<Relay, SendError> {
    let address = required_config("relay")?;
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .filter(|(h, p)| !h.is_empty() && *p != 0)
        .ok_or_else(|| {
            SendError::invalid(format!("config `relay` {address:?} is not host:port"))
        })?;
    let security = match config("security").as_deref() {
        None if port == 465 => Security::ImplicitTls,
        None | Some("starttls") => Security::Starttls,
        Some("tls") => Security::ImplicitTls,
        Some("none") => Security::None,
        Some(other) => {
            return Err(SendError::invalid(format!(
                "config `security` {other:?}: use starttls, tls or none"
            )));
        }
    };
    let credentials = match (config("username"), config("password")) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        _ => {
            return Err(SendError::invalid(
                "set both `username` and `password`, or neither",
            ));
        }
    };
    Ok(Relay {
        host: host.to_string(),
        port,
        security,
        credentials,
    })
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The relay's queue id from a reply such as "2.0.0 Ok: queued as 4F2A1".
fn queue_id(text: &str) -> Option<String> {
    let (_, rest) = first_line(text).split_once("queued as ")?;
    let id = rest.split_whitespace().next()?;
    (!id.is_empty() && id.len() <= 128).then(|| id.to_string())
}

notifyhub_plugin_sdk::export_plugin!(Smtp);
