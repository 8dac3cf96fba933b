//! Redaction of credentials before anything is printed.
//!
//! Webhook URLs carry their token in the path (Slack, Discord) or the query
//! (DingTalk `access_token`, WeCom `key`), so a target is shown as its scheme
//! and host only. Secrets never reach this module: they are held in
//! [`crate::sandbox::Secret`], whose `Debug` prints nothing.

/// `https://hooks.slack.com/services/T/B/X` → `https://hooks.slack.com/…`.
/// Targets that are not URLs (chat ids, addresses) are shown as they are.
pub fn target(target: &str) -> String {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target.to_string();
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..host_end];
    // Drop `user:password@` too.
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host_end == rest.len() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_scheme_and_host_only() {
        assert_eq!(
            super::target("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            super::target("https://u:pw@example.com?key=abc"),
            "https://example.com/…"
        );
        assert_eq!(
            super::target("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(super::target("-100123"), "-100123");
    }
}
