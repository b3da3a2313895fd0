//! `outbox-relay status`: per endpoint, its state (running, paused by the
//! circuit breaker or by hand, disabled), rows by status, how long the oldest
//! pending row has waited, the last five minutes' deliveries, failures and
//! probes, the keys held by a failing event, and the latest error; a table
//! for people, stable JSON (`--json`) for scripts.

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio_postgres::Client;

/// Longest error shown in the table; `--json` carries it whole.
const TABLE_ERROR_CHARS: usize = 160;

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub enabled: bool,
    /// `running`, `paused` or `disabled`.
    pub state: String,
    /// While paused: since when, and by whom (`auto`: the circuit breaker,
    /// `hand`: `outbox-relay pause`).
    pub paused_at: Option<String>,
    pub paused_by: Option<String>,
    /// The first failed attempt after the latest success; null while the
    /// latest attempt succeeded.
    pub failing_since: Option<String>,
    /// The latest probe of a paused endpoint.
    pub last_probe_at: Option<String>,
    pub rows: Rows,
    /// Age of the oldest pending row (since it was written); null if none.
    pub oldest_pending_seconds: Option<f64>,
    pub last_5m: Recent,
    /// Keys whose head event failed and waits for its retry (webhook.held_keys).
    pub held_keys: HeldKeys,
    /// The newest failed attempt still in webhook.attempts; null if none.
    pub latest_error: Option<LatestError>,
}

#[derive(Debug, Serialize)]
pub struct Rows {
    pub pending: i64,
    pub in_flight: i64,
    pub delivered: i64,
    pub dead: i64,
}

/// Attempts in the last five minutes.
#[derive(Debug, Serialize)]
pub struct Recent {
    pub delivered: i64,
    pub failed: i64,
    /// Probes among them (a paused endpoint's).
    pub probes: i64,
}

#[derive(Debug, Serialize)]
pub struct HeldKeys {
    pub count: i64,
    /// The key held longest; null when none is.
    pub oldest: Option<HeldKey>,
}

#[derive(Debug, Serialize)]
pub struct HeldKey {
    pub ordering_key: String,
    /// The event that holds it (its outbox row).
    pub outbox_id: i64,
    pub since: String,
}

#[derive(Debug, Serialize)]
pub struct LatestError {
    pub at: String,
    /// Seconds between the attempt and the report.
    pub age_seconds: f64,
    pub outbox_id: i64,
    pub event_id: String,
    pub attempt: i32,
    pub response_status: Option<i32>,
    pub error: String,
}

/// Reads the report (one statement, sql/status.sql).
pub async fn collect(client: &Client) -> Result<Report> {
    let now = Utc::now();
    // Unnamed (query_typed): works through a pooler in transaction mode too.
    let rows = client
        .query_typed(include_str!("../sql/status.sql"), &[])
        .await
        .context("reading the endpoints' status")?;
    let endpoints = rows
        .iter()
        .map(|r| {
            let error_at: Option<DateTime<Utc>> = r.get(9);
            let at = |i: usize| r.get::<_, Option<DateTime<Utc>>>(i).map(stamp);
            EndpointStatus {
                name: r.get(0),
                enabled: r.get(1),
                state: r.get(15),
                paused_at: at(16),
                paused_by: r.get(17),
                failing_since: at(18),
                last_probe_at: at(19),
                rows: Rows {
                    pending: r.get(2),
                    in_flight: r.get(3),
                    delivered: r.get(4),
                    dead: r.get(5),
                },
                oldest_pending_seconds: r.get(6),
                last_5m: Recent {
                    delivered: r.get(7),
                    failed: r.get(8),
                    probes: r.get(20),
                },
                held_keys: HeldKeys {
                    count: r.get(21),
                    oldest: r.get::<_, Option<String>>(22).map(|ordering_key| HeldKey {
                        ordering_key,
                        outbox_id: r.get(23),
                        since: stamp(r.get(24)),
                    }),
                },
                latest_error: error_at.map(|at| LatestError {
                    at: stamp(at),
                    age_seconds: (now - at).num_milliseconds().max(0) as f64 / 1000.0,
                    outbox_id: r.get(10),
                    event_id: r.get(11),
                    attempt: r.get(12),
                    response_status: r.get(13),
                    error: r.get(14),
                }),
            }
        })
        .collect();
    Ok(Report {
        generated_at: stamp(now),
        endpoints,
    })
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The report as a table, then one line per endpoint's latest error.
pub fn render_table(report: &Report) -> String {
    if report.endpoints.is_empty() {
        return "No endpoints in webhook.endpoints: run `outbox-relay migrate --config FILE` \
                or start the relay.\n"
            .into();
    }
    let header = [
        "ENDPOINT",
        "STATE",
        "PENDING",
        "IN FLIGHT",
        "DELIVERED",
        "DEAD",
        "OLDEST PENDING",
        "DELIVERED 5M",
        "FAILED 5M",
        "HELD KEYS",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for ep in &report.endpoints {
        lines.push(vec![
            ep.name.clone(),
            ep.state.clone(),
            ep.rows.pending.to_string(),
            ep.rows.in_flight.to_string(),
            ep.rows.delivered.to_string(),
            ep.rows.dead.to_string(),
            ep.oldest_pending_seconds.map_or("-".into(), age),
            ep.last_5m.delivered.to_string(),
            ep.last_5m.failed.to_string(),
            ep.held_keys.count.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                // Names and words left, numbers right.
                if i < 2 || i == 6 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push('\n');
    for ep in report.endpoints.iter().filter(|e| e.paused_at.is_some()) {
        let by = match ep.paused_by.as_deref() {
            Some("hand") => "by hand (no probes; `outbox-relay resume` lets it go)",
            _ => "by the circuit breaker (probing; the first probe delivered resumes it)",
        };
        out.push_str(&format!(
            "Paused: {} since {}, {by}",
            ep.name,
            ep.paused_at.as_deref().unwrap_or("?")
        ));
        if let Some(t) = &ep.last_probe_at {
            out.push_str(&format!("; last probe {t}"));
        }
        out.push('\n');
    }
    for ep in &report.endpoints {
        if let Some(k) = &ep.held_keys.oldest {
            out.push_str(&format!(
                "Held keys: {} has {}; held longest: key {:?} by row {} since {} (webhook.held_keys)\n",
                ep.name, ep.held_keys.count, k.ordering_key, k.outbox_id, k.since
            ));
        }
    }
    let errors: Vec<_> = report
        .endpoints
        .iter()
        .filter_map(|ep| ep.latest_error.as_ref().map(|e| (&ep.name, e)))
        .collect();
    if errors.is_empty() {
        out.push_str("No failed attempts on record.\n");
    } else {
        out.push_str("Latest errors:\n");
        for (name, e) in errors {
            out.push_str(&format!(
                "  {name}: {} ago, row {} ({}) attempt {}: {}\n",
                age(e.age_seconds),
                e.outbox_id,
                e.event_id,
                e.attempt,
                one_line(&e.error, TABLE_ERROR_CHARS)
            ));
        }
    }
    out
}

/// Whole seconds, as "4m 12s".
fn age(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

/// Control characters flattened, cut at `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            generated_at: "2024-05-01T12:00:00.000Z".into(),
            endpoints: vec![
                EndpointStatus {
                    name: "billing".into(),
                    enabled: false,
                    state: "disabled".into(),
                    paused_at: None,
                    paused_by: None,
                    failing_since: None,
                    last_probe_at: None,
                    rows: Rows {
                        pending: 0,
                        in_flight: 0,
                        delivered: 12,
                        dead: 0,
                    },
                    oldest_pending_seconds: None,
                    last_5m: Recent {
                        delivered: 0,
                        failed: 0,
                        probes: 0,
                    },
                    held_keys: HeldKeys {
                        count: 0,
                        oldest: None,
                    },
                    latest_error: None,
                },
                EndpointStatus {
                    name: "crm".into(),
                    enabled: true,
                    state: "paused".into(),
                    paused_at: Some("2024-05-01T11:58:00.000Z".into()),
                    paused_by: Some("auto".into()),
                    failing_since: Some("2024-05-01T11:53:00.000Z".into()),
                    last_probe_at: Some("2024-05-01T11:59:48.000Z".into()),
                    rows: Rows {
                        pending: 3,
                        in_flight: 1,
                        delivered: 1200,
                        dead: 2,
                    },
                    oldest_pending_seconds: Some(252.7),
                    last_5m: Recent {
                        delivered: 30,
                        failed: 2,
                        probes: 1,
                    },
                    held_keys: HeldKeys {
                        count: 3,
                        oldest: Some(HeldKey {
                            ordering_key: "0042".into(),
                            outbox_id: 70,
                            since: "2024-05-01T11:50:00.000Z".into(),
                        }),
                    },
                    latest_error: Some(LatestError {
                        at: "2024-05-01T11:59:48.000Z".into(),
                        age_seconds: 12.0,
                        outbox_id: 77,
                        event_id: "evt_1".into(),
                        attempt: 3,
                        response_status: Some(503),
                        error: "HTTP 503\nService Unavailable".into(),
                    }),
                },
            ],
        }
    }

    #[test]
    fn the_table_lines_up_and_lists_latest_errors() {
        let text = render_table(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ENDPOINT  STATE     PENDING  IN FLIGHT  DELIVERED  DEAD  OLDEST PENDING  DELIVERED 5M  FAILED 5M  HELD KEYS"
        );
        assert_eq!(
            lines[1],
            "billing   disabled        0          0         12     0  -                          0          0          0"
        );
        assert_eq!(
            lines[2],
            "crm       paused          3          1       1200     2  4m 12s                    30          2          3"
        );
        assert_eq!(
            lines[4],
            "Paused: crm since 2024-05-01T11:58:00.000Z, by the circuit breaker (probing; the first \
             probe delivered resumes it); last probe 2024-05-01T11:59:48.000Z"
        );
        assert_eq!(
            lines[5],
            "Held keys: crm has 3; held longest: key \"0042\" by row 70 since \
             2024-05-01T11:50:00.000Z (webhook.held_keys)"
        );
        assert_eq!(lines[6], "Latest errors:");
        assert_eq!(
            lines[7],
            "  crm: 12s ago, row 77 (evt_1) attempt 3: HTTP 503 Service Unavailable"
        );
    }

    #[test]
    fn json_keys_are_stable() {
        let json = serde_json::to_value(report()).unwrap();
        let crm = &json["endpoints"][1];
        assert_eq!(crm["rows"]["delivered"], 1200);
        assert_eq!(crm["last_5m"]["failed"], 2);
        assert_eq!(crm["latest_error"]["response_status"], 503);
        assert!(json["endpoints"][0]["latest_error"].is_null());
        assert!(json["endpoints"][0]["oldest_pending_seconds"].is_null());
        assert_eq!(crm["state"], "paused");
        assert_eq!(crm["paused_by"], "auto");
        assert_eq!(crm["last_5m"]["probes"], 1);
        assert_eq!(
            crm["held_keys"],
            serde_json::json!({"count": 3, "oldest": {"ordering_key": "0042", "outbox_id": 70,
                                                     "since": "2024-05-01T11:50:00.000Z"}})
        );
        assert_eq!(
            json["endpoints"][0]["held_keys"],
            serde_json::json!({"count": 0, "oldest": null})
        );
    }

    #[test]
    fn long_errors_are_cut_in_the_table() {
        assert_eq!(one_line("abcdef", 3), "abc...");
        assert_eq!(one_line("a\tb", 10), "a b");
    }
}
