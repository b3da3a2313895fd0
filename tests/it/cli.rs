//! The binary itself: exit codes, config errors, `migrate`.

use std::process::{Command, Output};

use crate::support::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn relay(args: &[&str], config: Option<&str>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path()).env_remove("DATABASE_URL");
    if let Some(text) = config {
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(&path);
    }
    cmd.args(args).output().unwrap()
}

fn endpoint(name: &str, extra: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"add_credits\"]\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

#[test]
fn bad_configs_exit_2_with_one_clear_line() {
    let cases = [
        (
            "listen = [\n",
            "relay.toml line 2: invalid array, expected `]`",
        ),
        (
            &*endpoint("a", "retries = 3"),
            "line 6 (retries): unknown field `retries`",
        ),
        (
            &*endpoint("a", "").replace("add_credits", "credits_gone"),
            "unknown event code \"credits_gone\"",
        ),
        (
            &*endpoint("a", "").replace("http://127.0.0.1:9/hook", "mailto:x@y"),
            "line 3 (url)",
        ),
        (
            &*endpoint("a", "").replace(SECRET, "whsec_dG9vc2hvcnQ="),
            "line 5 (secret): invalid secret",
        ),
        (
            &*format!("{}{}", endpoint("a", ""), endpoint("a", "")),
            "duplicate endpoint name \"a\"",
        ),
        (
            &*endpoint("a", "timeout = \"ten\""),
            "line 6 (timeout): invalid duration",
        ),
    ];
    for (text, expected) in cases {
        let out = relay(
            &["migrate", "--database-url", "postgres://127.0.0.1:1/none"],
            Some(text),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = relay(&["migrate", "--config", "/nonexistent/relay.toml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn usage_errors_exit_2() {
    let out = relay(&["no-such-command"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_is_printed() {
    let out = relay(&["--version"], None);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("outbox-relay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn migrate_is_idempotent_and_mirrors_endpoints_without_secrets() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute("DROP SCHEMA webhook CASCADE")
        .await
        .unwrap();

    let url = db.url.clone();
    let run = move |cfg: Option<String>| {
        let url = url.clone();
        std::thread::spawn(move || relay(&["migrate", "--database-url", &url], cfg.as_deref()))
            .join()
            .unwrap()
    };
    let first = run(None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied V1__webhook_schema"));
    let second = run(None);
    assert!(second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("up to date"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );

    let two = format!(
        "{}{}",
        endpoint(
            "crm",
            "[endpoint.headers]\nAuthorization = \"Bearer header-token-xyz\""
        ),
        endpoint("billing", "enabled = false")
    )
    .replace(
        "http://127.0.0.1:9/hook",
        "https://user:url-password@hooks.example.com/in",
    );
    let out = run(Some(two));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = c
        .query(
            "SELECT name, url, events, enabled FROM webhook.endpoints ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, Vec<String>, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        [
            (
                "billing".into(),
                "https://user:***@hooks.example.com/in".into(),
                vec!["add_credits".into()],
                false
            ),
            (
                "crm".into(),
                "https://user:***@hooks.example.com/in".into(),
                vec!["add_credits".into()],
                true
            ),
        ]
    );

    // Dropping an endpoint from the file disables it; its row stays.
    let out = run(Some(endpoint("billing", "")));
    assert!(out.status.success());
    let rows = c
        .query(
            "SELECT name, enabled FROM webhook.endpoints ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [("billing".into(), true), ("crm".into(), false)]);

    // Nothing secret reached the database.
    let dump: String = c
        .query_one(
            "SELECT string_agg(e::text, ' ') FROM webhook.endpoints e",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for needle in ["C2FVsBQIhrscChlQIMV", "header-token-xyz", "url-password"] {
        assert!(
            !dump.contains(needle),
            "{needle} found in webhook.endpoints"
        );
    }
}

#[test]
fn gen_secret_prints_a_fresh_valid_secret() {
    let a = relay(&["gen-secret"], None);
    let b = relay(&["gen-secret"], None);
    assert!(a.status.success() && b.status.success());
    let (a, b) = (
        String::from_utf8(a.stdout).unwrap().trim().to_string(),
        String::from_utf8(b.stdout).unwrap().trim().to_string(),
    );
    assert_ne!(a, b, "two runs gave the same secret");
    for s in [&a, &b] {
        let secret = outbox_relay::config::Secret::parse(s).expect("a valid whsec_ secret");
        assert_eq!(secret.bytes().len(), 32);
    }
}
