//! A deliberately misbehaving plugin for the host's sandbox tests. The
//! message body picks the misbehaviour (`get URL` fetches a URL, following
//! redirects); any other body succeeds. The manifest's `describe` setting
//! makes `describe()` misbehave instead (`spin`, `huge`, `many`,
//! `unprintable`), and `platform` names the platform it claims.

use notifyhub_plugin_sdk::{Message, Plugin, PluginInfo, Receipt, SendError, config, http, log};

struct Hostile;

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        let mut info = PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec![config("platform").unwrap_or_else(|| "hostile".into())],
            config_keys: vec![],
            rate_limits: vec![],
            description: "Traps, loops, hoards memory or floods on request (tests only).".into(),
        };
        match config("describe").as_deref() {
            Some("spin") => loop {
                core::hint::spin_loop();
            },
            Some("huge") => info.description = "x".repeat(100 << 20),
            Some("many") => info.platforms = (0..10_000).map(|i| format!("p{i}")).collect(),
            Some("unprintable") => info.platforms = vec!["bad\nname\u{202e}\0".into()],
            _ => {}
        }
        info
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if let Some(url) = message.body.strip_prefix("get ") {
            return get_following_redirects(url);
        }
        match message.body.as_str() {
            "trap" => core::arch::wasm32::unreachable(),
            "panic" => panic!("the hostile plugin panicked on purpose"),
            "loop" => loop {
                core::hint::spin_loop();
            },
            "grow-memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            "recurse" => Ok(Receipt::status(format!("{}", recurse(1)))),
            "log-once" => {
                log::info("a line from inside the plugin");
                Ok(Receipt::status("logged"))
            }
            "log-flood" => loop {
                log::info(&"x".repeat(1024));
            },
            "huge-receipt" => Ok(Receipt::status("x".repeat(100 << 20))),
            "big-receipt" => Ok(Receipt::status("x".repeat(512 << 10))),
            "one-call-big" => one_call(600 << 10),
            "one-call-huge" => one_call(2 << 20),
            "read-file" => match std::fs::read("/etc/passwd") {
                Ok(_) => Err(SendError::invalid("read /etc/passwd")),
                Err(e) => Err(SendError::permanent(format!(
                    "cannot read /etc/passwd: {e}"
                ))),
            },
            _ => Ok(Receipt::status("ok")),
        }
    }
}

/// GETs `url`, following redirects the way an HTTP library would, so the
/// host's allowlist is tested on every hop.
fn get_following_redirects(url: &str) -> Result<Receipt, SendError> {
    let mut url = url.to_string();
    for _ in 0..5 {
        let response = http::Request::get(&url).send()?;
        match (response.status, response.header("location")) {
            (300..=399, Some(location)) => url = location.to_string(),
            _ => {
                return response
                    .classify()
                    .map(|()| Receipt::status(format!("HTTP {}", response.status)));
            }
        }
    }
    Err(SendError::permanent("too many redirects"))
}

#[inline(never)]
/// A request handed to the host in one call (`notifyhub:http/client`) with
/// a body of `size` bytes, past the 512 KiB one call takes.
fn one_call(size: usize) -> Result<Receipt, SendError> {
    use notifyhub_plugin_sdk::bindings::notifyhub::http::client::{self, HttpError, Request};
    use notifyhub_plugin_sdk::bindings::wasi::http::types::Method;
    let request = Request {
        method: Method::Post,
        url: "http://127.0.0.1:9/".into(),
        headers: Vec::new(),
        body: vec![0; size],
    };
    match client::send(&request) {
        Ok(response) => Ok(Receipt::status(format!("HTTP {}", response.status))),
        Err(HttpError::Invalid(reason)) => Err(SendError::invalid(reason)),
        Err(HttpError::Transport(code)) => Err(SendError::retryable(format!("{code:?}"), None)),
    }
}

#[allow(unconditional_recursion, reason = "overflowing the stack is the point")]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    core::hint::black_box(&frame);
    recurse(depth + 1) + frame[0]
}

notifyhub_plugin_sdk::export_plugin!(Hostile);
