//! The shipped Grafana dashboard and Prometheus alerts: their PromQL is valid
//! (promtool), and every metric they name is exported by a running relay.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::delivery::{enqueue, start_one, wait_status};
use crate::receiver::Receiver;
use crate::support::TestDb;

const PROMTOOL: &str = "promtool";
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("examples/grafana/outbox-relay.json"))
        .expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard: panel targets and the
/// template variables' queries.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in d["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

/// The `outbox_relay_*` names in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("outbox_relay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The series names a scrape offers: every sample's name, and for each
/// declared family the names its type gives it (a counter `_total`, a
/// histogram `_bucket`, `_sum`, `_count`), also before it has samples.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay = start_one(&db, "crm", &rx.url, "").await;
    enqueue(&c, 2).await;
    wait_status(&c, "delivered", 2, "delivered", WAIT).await;
    let scrape = reqwest::get(format!("http://{}/metrics", relay.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let offered = exported(&scrape);

    let d = dashboard();
    let mut used = BTreeSet::new();
    for expr in dashboard_exprs(&d) {
        used.extend(metric_names(&expr));
    }
    for var in d["templating"]["list"].as_array().unwrap() {
        used.extend(metric_names(&var.to_string()));
    }
    let alerts = read("examples/prometheus/alerts.yml");
    used.extend(metric_names(&alerts));
    assert!(used.len() >= 8, "only {used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !offered.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named by the dashboard or the alerts but not exported: {missing:?}\nscrape:\n{scrape}"
    );
    relay.shutdown().await;
}

#[test]
fn the_dashboard_covers_what_an_operator_looks_at() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_i64().unwrap() >= 30);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    let exprs = dashboard_exprs(&d).join("\n");
    for (topic, metric) in [
        (
            "throughput",
            "outbox_relay_attempts_total{outcome=\"delivered\"",
        ),
        (
            "failures by status class",
            "outbox_relay_attempt_results_total{class!=\"2xx\"",
        ),
        ("backlog", "outbox_relay_outbox_rows{status=\"pending\""),
        ("oldest pending age", "outbox_relay_oldest_pending_seconds"),
        (
            "attempt latency",
            "outbox_relay_attempt_duration_seconds_bucket",
        ),
        ("paused endpoints", "outbox_relay_endpoint_paused"),
        ("readiness", "outbox_relay_ready"),
    ] {
        assert!(exprs.contains(metric), "no panel for {topic}");
    }
}

fn promtool_check(rules: &Path) -> String {
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(rules)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{PROMTOOL} cannot be run ({e}): it checks the alerting rules; install Debian's \
                 prometheus package (bash .ci/test does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_alerts_and_the_dashboards_queries() {
    let alerts = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus/alerts.yml");
    let text = promtool_check(&alerts);
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    for alert in [
        "OutboxRelayDown",
        "OutboxRelayNotReady",
        "OutboxRelayBacklogOld",
        "OutboxRelayDeadRowsGrowing",
        "OutboxRelayEndpointPaused",
    ] {
        assert!(
            read("examples/prometheus/alerts.yml").contains(&format!("alert: {alert}\n")),
            "{alert}"
        );
    }

    // The dashboard's queries, with Grafana's variables filled in, as
    // recording rules: promtool parses each one.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$endpoint", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.yml");
    std::fs::write(&path, rules).unwrap();
    promtool_check(&path);
}
