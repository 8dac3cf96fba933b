//! Which hosts take part: each announces itself in a bucket every few
//! seconds, and `status` on any host lists the announcements.
//!
//! The bucket's age limit does the forgetting: a host that stops (or dies)
//! stops announcing, and its entry expires [`FORGET_AFTER`] later. Nothing
//! depends on this list for correctness — the broker hands out the work —
//! it is there so an operator can see who shares it.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::{BrokerError, bucket, records_error};
use crate::protocol::{HostView, format_time};

/// How often a host announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// How long an announcement stays (several missed announcements).
pub const FORGET_AFTER: Duration = Duration::from_secs(10);

/// The hosts bucket.
pub struct Hosts {
    bucket: kv::Store,
}

/// A host's name as a bucket key: letters, digits, `-` and `_` kept, any
/// other character becomes `_`.
pub fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// This machine's host name and the process id: unique among hosts on one
/// machine and readable in `status`.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

impl Hosts {
    pub(super) async fn open(
        js: &async_nats::jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<Hosts, BrokerError> {
        Ok(Hosts {
            bucket: bucket(js, &format!("{stream}_hosts"), FORGET_AFTER, replicas).await?,
        })
    }

    pub async fn announce(&self, host: &HostView) -> Result<(), BrokerError> {
        let bytes = serde_json::to_vec(host).map_err(records_error)?;
        self.bucket
            .put(key(&host.name), bytes.into())
            .await
            .map(|_| ())
            .map_err(records_error)
    }

    /// Takes this host off the list at once (on a graceful stop).
    pub async fn leave(&self, name: &str) {
        let _ = self.bucket.purge(key(name)).await;
    }

    /// Every host that announced itself within [`FORGET_AFTER`], by name.
    pub async fn list(&self) -> Result<Vec<HostView>, BrokerError> {
        let mut keys = self.bucket.keys().await.map_err(records_error)?;
        let mut hosts = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(records_error)?;
            if let Some(bytes) = self.bucket.get(&key).await.map_err(records_error)?
                && let Ok(host) = serde_json::from_slice::<HostView>(&bytes)
            {
                hosts.push(host);
            }
        }
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(hosts)
    }
}

/// Now, as announcements show it.
pub fn now() -> String {
    format_time(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_name_becomes_a_valid_key() {
        assert_eq!(key("web-1.example.com-42"), "web-1_example_com-42");
        assert_eq!(key("ünï code"), "_n__code");
        assert!(default_name().contains('-'));
    }
}
