//! E-mail through the host's SMTP capability (`notifyhub:smtp/client`,
//! `wit/deps/notifyhub-smtp`): the plugin composes the message, the host
//! connects, secures, authenticates and sends it.
//!
//! Only plugins that call [`send`] import the interface; the others keep
//! the plain `plugin` world's imports.
//!
//! [`SmtpError`] converts into [`SendError`] by the reply code (RFC 5321
//! §4.2, RFC 3463): 421 and 45x are transient (retryable; a 452 that says
//! "too many" or "rate" is rate-limited), 530/534/535/538 are failed
//! authentication (permanent), 500–504 (syntax), 552 (too large) and 553
//! (mailbox name) say the message is wrong (invalid), other 5xx permanent.
//! No answer at all (connection refused or dropped, TLS failure, timeout)
//! is retryable; a call the host refuses is invalid configuration.

use crate::SendError;
pub use crate::bindings::notifyhub::smtp::client::{
    Credentials, Envelope, Relay, Reply, Security, SmtpError,
};

/// How long a relay that asked to slow down is left alone, in ms.
pub const RATE_LIMIT_PAUSE_MS: u64 = 60_000;

/// Sends `message` (RFC 5322 text, CRLF line endings) through `relay`.
pub fn send(relay: &Relay, envelope: &Envelope, message: &[u8]) -> Result<Reply, SmtpError> {
    crate::bindings::notifyhub::smtp::client::send(relay, envelope, message)
}

impl From<SmtpError> for SendError {
    fn from(error: SmtpError) -> Self {
        match error {
            SmtpError::Rejected(reply) => classify(&reply),
            SmtpError::Failed(why) => SendError::retryable(format!("SMTP: {why}"), None),
            SmtpError::Denied(why) => {
                SendError::invalid(format!("SMTP refused by the host: {why}"))
            }
            SmtpError::Invalid(why) => SendError::invalid(format!("SMTP: {why}")),
        }
    }
}

/// What a negative reply means for the task.
pub fn classify(reply: &Reply) -> SendError {
    let text = format!("SMTP {} {}", reply.code, reply.text.replace('\n', " "));
    let lower = reply.text.to_ascii_lowercase();
    match reply.code {
        452 if lower.contains("too many") || lower.contains("rate") => {
            SendError::rate_limited(text, RATE_LIMIT_PAUSE_MS)
        }
        400..=499 => SendError::retryable(text, None),
        530 | 534 | 535 | 538 => SendError::permanent(format!("authentication failed: {text}")),
        500..=504 | 552 | 553 => SendError::invalid(text),
        _ => SendError::permanent(text),
    }
}
