//! Property-based fuzzing of everything that parses untrusted input: the
//! socket protocol decoder, plugin manifests and the config file. None may
//! panic, whatever the input; well-formed requests must decode.
//!
//! CI runs the default number of cases. To run longer:
//! `PROPTEST_CASES=1000000 cargo test -p notifyhub --test fuzz`.

use notifyhub::config::FileConfig;
use notifyhub::manifest::Manifest;
use notifyhub::protocol::{self, MAX_SCHEDULE_AHEAD, MAX_WORKERS, Request};
use proptest::prelude::*;

/// Strings that look like JSON requests, so the fuzzer gets past the parser.
fn jsonish() -> impl Strategy<Value = String> {
    let op = prop_oneof![
        Just("submit"),
        Just("task"),
        Just("tasks"),
        Just("retry"),
        Just("status"),
        Just("plugins"),
        Just("scale"),
        Just("reload"),
        Just("ping"),
        Just("bogus")
    ];
    let value = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9 ]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("{\"platform\":\"p\",\"target\":\"t\",\"body\":\"b\"}".to_string()),
        Just("[{\"platform\":\"p\",\"target\":\"t\",\"body\":\"b\",\"delay\":\"1s\"}]".to_string()),
    ];
    let key = prop_oneof![
        Just("id"),
        Just("task"),
        Just("tasks"),
        Just("wait"),
        Just("task_id"),
        Just("state"),
        Just("min"),
        Just("max"),
        Just("name"),
        Just("dead"),
        Just("limit"),
        Just("x")
    ];
    (op, prop::collection::vec((key, value), 0..5)).prop_map(|(op, fields)| {
        let mut line = format!("{{\"op\":\"{op}\"");
        for (k, v) in fields {
            line.push_str(&format!(",\"{k}\":{v}"));
        }
        line.push('}');
        line
    })
}

proptest! {
    #[test]
    fn the_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = protocol::decode(&bytes);
    }

    #[test]
    fn the_decoder_never_panics_on_requests(line in jsonish()) {
        if let Err((_, error)) = protocol::decode(line.as_bytes()) {
            prop_assert!(!error.message.is_empty());
        }
    }

    #[test]
    fn well_formed_submits_decode(platform in "[a-z]{1,10}", body in ".{0,40}", wait: bool) {
        let line = serde_json::json!({"op": "submit", "wait": wait,
            "task": {"platform": platform, "target": "t", "body": body}}).to_string();
        let (_, request) = protocol::decode(line.as_bytes()).map_err(|(_, e)| TestCaseError::fail(e.message))?;
        prop_assert!(matches!(request, Request::Submit(_)));
    }

    #[test]
    fn manifests_and_configs_never_panic(text in "[\\[\\]a-z_=\"{}., 0-9\n]{0,200}") {
        let _ = Manifest::parse(&text);
        let _ = FileConfig::parse(&text);
    }

    #[test]
    fn decoded_schedules_are_bounded(n in any::<u64>(), unit in "(ns|ms|s|m|h|d|w|y)", year in 0u32..30_000) {
        let delay = format!("{n}{unit}");
        let at = format!("{year:04}-06-01T00:00:00Z");
        for task in [
            serde_json::json!({"platform": "p", "target": "t", "body": "b", "delay": delay}),
            serde_json::json!({"platform": "p", "target": "t", "body": "b", "deliver_at": at}),
        ] {
            let line = serde_json::json!({"op": "submit", "task": task}).to_string();
            if let Ok((_, Request::Submit(submit))) = protocol::decode(line.as_bytes()) {
                let latest = std::time::SystemTime::now() + MAX_SCHEDULE_AHEAD;
                for t in submit.into_tasks() {
                    prop_assert!(t.delay.is_none_or(|d| d.get() <= MAX_SCHEDULE_AHEAD));
                    prop_assert!(t.deliver_at.is_none_or(|a| a.get() <= latest));
                }
            }
        }
    }

    #[test]
    fn a_config_that_validates_has_bounded_pools(min in any::<u64>(), max in any::<u64>()) {
        let text = format!("[pool]\nmin_workers = {}\nmax_workers = {}\n", min % (1 << 40), max % (1 << 40));
        if let Ok(config) = FileConfig::parse(&text)
            && config.pool.validate().is_ok()
        {
            prop_assert!(config.pool.max_workers <= MAX_WORKERS);
            prop_assert!(config.pool.min_workers <= config.pool.max_workers);
        }
    }
}
