//! Property tests: config parsing and Retry-After parsing never panic, on
//! arbitrary text and on mutations of a valid config.

use std::time::{Duration, SystemTime};

use outbox_relay::config::Config;
use outbox_relay::retry::{self, NextStep, RetryPolicy};
use proptest::prelude::*;

const VALID: &str = r#"database_url = "postgres://app@localhost/app"
listen = "127.0.0.1:9187"
poll_interval = "1s"
lease = "60s"

[[endpoint]]
name = "crm"
url = "https://crm.example.com/webhooks"
events = ["user_credits_zero", "post_code_change", "add_credits"]
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
timeout = "5s"
max_attempts = 5
retry_initial = "1s"
retry_max = "1h"
rate_limit = 10.0
burst = 5
max_in_flight = 8
previous_secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
enabled = true
no_retry_statuses = [410]
[endpoint.headers]
X-Team = "billing"
"#;

const KEYS: &[&str] = &[
    "database_url",
    "listen",
    "poll_interval",
    "lease",
    "claim_batch",
    "shutdown_timeout",
    "relay_name",
    "extra_events",
    "name",
    "url",
    "events",
    "secret",
    "secret_env",
    "previous_secrets",
    "timeout",
    "max_attempts",
    "retry_initial",
    "retry_max",
    "rate_limit",
    "burst",
    "max_in_flight",
    "enabled",
    "no_retry_statuses",
    "bogus",
];

fn env(_: &str) -> Option<String> {
    None
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,30}".prop_map(|s| format!("{s:?}")),
        "[0-9]{1,20}(ns|ms|s|m|h|d|y|x)?".prop_map(|s| format!("\"{s}\"")),
        Just("[]".to_string()),
        Just("[\"add_credits\", 3]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("\"whsec_\"".to_string()),
        Just("\"http://[::1]:99999/x\"".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = Config::parse(&text, "fuzz.toml", &env);
    }

    #[test]
    fn random_key_value_documents_never_panic(
        top in prop::collection::vec((prop::sample::select(KEYS), value()), 0..6),
        endpoints in prop::collection::vec(prop::collection::vec((prop::sample::select(KEYS), value()), 0..12), 0..3),
    ) {
        let mut text = String::new();
        for (k, v) in top {
            text.push_str(&format!("{k} = {v}\n"));
        }
        for ep in endpoints {
            text.push_str("[[endpoint]]\n");
            for (k, v) in ep {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        let _ = Config::parse(&text, "fuzz.toml", &env);
    }

    #[test]
    fn mutations_of_a_valid_config_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..8),
    ) {
        let mut chars: Vec<char> = VALID.chars().collect();
        for (at, op, c) in edits {
            let i = at.index(chars.len().max(1)).min(chars.len());
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => { chars.remove(i); }
                _ if i < chars.len() => chars[i] = c,
                _ => chars.push(c),
            }
        }
        let text: String = chars.into_iter().collect();
        if let Err(e) = Config::parse(&text, "fuzz.toml", &env) {
            // Errors stay one line and never carry the secret.
            prop_assert!(!e.0.contains('\n'), "{}", e.0);
            prop_assert!(!e.0.contains("C2FVsBQIhrscChlQIMV"), "{}", e.0);
        }
    }

    #[test]
    fn retry_after_parsing_never_panics(text in any::<String>(), now in 0u64..4_000_000_000) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let _ = retry::parse_retry_after(&text, now);
    }

    #[test]
    fn retry_after_like_values_never_panic_and_delays_stay_bounded(
        text in prop_oneof![
            "[0-9]{0,40}",
            "(Mon|Tue|Wed|Sun|Xyz), [0-9]{1,2} (Jan|Feb|Oct|Foo) [0-9]{1,5} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2} (GMT|UTC)",
            "[ -~]{0,40}",
        ],
        attempt in any::<u32>(),
        status in prop::option::of(100u16..600),
        initial_ms in 1u64..100_000_000,
        max_ms in 1u64..100_000_000,
        unit in 0.0f64..1.0,
    ) {
        let retry_after = retry::parse_retry_after(&text, SystemTime::now());
        let policy = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(initial_ms.min(max_ms)),
            max: Duration::from_millis(max_ms),
            no_retry_statuses: vec![410],
        };
        if let NextStep::Retry(delay) = retry::next_step(&policy, attempt, status, retry_after, unit) {
            prop_assert!(delay <= policy.max.max(retry::RETRY_AFTER_MIN));
        }
    }
}
