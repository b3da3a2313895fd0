//! The status page's HTML, as pure functions of the data: every value from
//! the database goes through [`escape`] (response bodies are the receivers'
//! words, not ours).

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{MINUTES, REFRESH_SECONDS};

/// One endpoint's row of the page.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    /// `running`, `paused` or `disabled`.
    pub state: String,
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub last_probe_at: Option<DateTime<Utc>>,
    /// Attempts per minute, oldest minute first ([`MINUTES`] of them).
    pub delivered_per_minute: Vec<i32>,
    pub failed_per_minute: Vec<i32>,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
    pub oldest_pending_seconds: Option<f64>,
    /// Keys held back by a failing event (webhook.held_keys).
    pub held_keys: i64,
}

/// One failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: DateTime<Utc>,
    pub endpoint: String,
    pub event_id: String,
    pub event_code: String,
    pub attempt: i32,
    pub probe: bool,
    pub response_status: Option<i32>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// Where the row stands now.
    pub row_status: String,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub generated_at: DateTime<Utc>,
    pub endpoints: Vec<Endpoint>,
    pub failures: Vec<Failure>,
}

/// Text made safe for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2430;background:#f4f6f9}\
header{background:#1d2430;color:#fff;padding:12px 16px}\
header h1{margin:0;font-size:20px}header p{margin:2px 0 0;color:#b8c2d0;font-size:13px}\
main{padding:12px 16px;max-width:1200px;margin:0 auto}\
h2{font-size:17px;margin:18px 0 8px}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:12px}\
.ep{background:#fff;border-radius:8px;padding:12px;border-left:6px solid #2e9e5b;box-shadow:0 1px 2px #0002}\
.ep.paused{border-left-color:#e0a100}.ep.disabled{border-left-color:#98a2b3}\
.ep h3{margin:0 0 4px;font-size:16px;display:flex;justify-content:space-between;gap:8px;word-break:break-all}\
.badge{font-size:12px;font-weight:600;padding:2px 8px;border-radius:10px;color:#fff;background:#2e9e5b;white-space:nowrap}\
.badge.paused{background:#e0a100}.badge.disabled{background:#98a2b3}\
.why{margin:0 0 6px;font-size:13px;color:#6b4e00}\
dl{display:grid;grid-template-columns:1fr auto;gap:2px 12px;margin:6px 0}\
dt{color:#5a6473}dd{margin:0;text-align:right;font-variant-numeric:tabular-nums;font-weight:600}\
dd.bad{color:#c0362c}\
.spark{display:flex;align-items:flex-end;gap:2px;height:40px;margin-top:6px;border-bottom:1px solid #d5dbe3}\
.spark div{flex:1;display:flex;flex-direction:column-reverse;height:100%}\
.spark .d{background:#2e9e5b}.spark .f{background:#c0362c}\
.legend{font-size:12px;color:#5a6473;margin-top:2px}\
.scroll{overflow-x:auto;background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002}\
table{border-collapse:collapse;width:100%;font-size:13px}\
th,td{padding:6px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #e6eaf0}\
th{background:#eef1f5;white-space:nowrap}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12px/1.3 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}\
.empty{color:#5a6473;font-style:italic}\
form{background:#fff;border-radius:8px;padding:16px;max-width:420px;box-shadow:0 1px 2px #0002}\
input{font:inherit;padding:8px;width:100%;margin:6px 0 10px;border:1px solid #b8c2d0;border-radius:6px}\
button{font:inherit;padding:8px 16px;border:0;border-radius:6px;background:#1d2430;color:#fff}\
.error{color:#c0362c}\
footer{color:#5a6473;font-size:12px;padding:16px}";

fn head(out: &mut String, refresh: bool) {
    out.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if refresh {
        let _ = write!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
        );
    }
    out.push_str("<title>outbox-relay status</title><style>");
    out.push_str(STYLE);
    out.push_str("</style></head><body>");
}

fn clock(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// "4m 12s" for people.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    format!(
        "{} ({} ago)",
        clock(t),
        age((now - t).num_milliseconds() as f64 / 1000.0)
    )
}

fn endpoint_card(out: &mut String, now: DateTime<Utc>, ep: &Endpoint) {
    let state = escape(&ep.state);
    let delivered: i64 = ep.delivered_per_minute.iter().map(|&n| i64::from(n)).sum();
    let failed: i64 = ep.failed_per_minute.iter().map(|&n| i64::from(n)).sum();
    let _ = write!(
        out,
        "<article class=\"ep {state}\" data-endpoint=\"{name}\"><h3><span>{name}</span>\
         <span class=\"badge {state}\" data-field=\"state\">{state}</span></h3>",
        name = escape(&ep.name),
    );
    if let Some(at) = ep.paused_at {
        let by = match ep.paused_by.as_deref() {
            Some("hand") => "by hand: no probes until it is resumed",
            _ => "by the circuit breaker: probing, the first delivered probe resumes it",
        };
        let _ = write!(
            out,
            "<p class=\"why\" data-field=\"paused\">Paused {by}. Since {}",
            escape(&ago(now, at))
        );
        if let Some(f) = ep.failing_since {
            let _ = write!(out, "; failing since {}", escape(&clock(f)));
        }
        if let Some(p) = ep.last_probe_at {
            let _ = write!(out, "; last probe {}", escape(&ago(now, p)));
        }
        out.push_str(".</p>");
    }
    let oldest = ep.oldest_pending_seconds.map_or("-".to_string(), age);
    let _ =
        write!(
        out,
        "<dl><dt>Delivered, last {MINUTES} min</dt><dd data-field=\"delivered\">{delivered}</dd>\
         <dt>Failed, last {MINUTES} min</dt><dd data-field=\"failed\"{}>{failed}</dd>\
         <dt>Pending</dt><dd data-field=\"pending\">{}</dd>\
         <dt>In flight</dt><dd data-field=\"in_flight\">{}</dd>\
         <dt>Dead</dt><dd data-field=\"dead\"{}>{}</dd>\
         <dt>Oldest pending</dt><dd data-field=\"oldest_pending\">{oldest}</dd>\
         <dt>Held keys</dt><dd data-field=\"held_keys\"{}>{}</dd></dl>",
        if failed > 0 { " class=\"bad\"" } else { "" },
        ep.pending,
        ep.in_flight,
        if ep.dead > 0 { " class=\"bad\"" } else { "" },
        ep.dead,
        if ep.held_keys > 0 { " class=\"bad\"" } else { "" },
        ep.held_keys,
    );
    // One bar per minute: delivered (green) under failed (red), scaled to
    // the endpoint's busiest minute.
    let busiest = ep
        .delivered_per_minute
        .iter()
        .zip(&ep.failed_per_minute)
        .map(|(d, f)| d + f)
        .max()
        .unwrap_or(0)
        .max(1);
    out.push_str("<div class=\"spark\" aria-hidden=\"true\">");
    for (i, (d, f)) in ep
        .delivered_per_minute
        .iter()
        .zip(&ep.failed_per_minute)
        .enumerate()
    {
        let minutes_ago = ep.delivered_per_minute.len() - 1 - i;
        let _ = write!(
            out,
            "<div title=\"{minutes_ago} min ago: {d} delivered, {f} failed\">\
             <span class=\"d\" style=\"height:{}%\"></span><span class=\"f\" style=\"height:{}%\"></span></div>",
            d * 100 / busiest,
            f * 100 / busiest
        );
    }
    let _ = write!(
        out,
        "</div><div class=\"legend\">attempts per minute, last {MINUTES} minutes: \
         delivered green, failed red</div></article>"
    );
}

fn failures_table(out: &mut String, now: DateTime<Utc>, failures: &[Failure]) {
    if failures.is_empty() {
        out.push_str(
            "<p class=\"empty\" id=\"no-failures\">No failed attempts in the last 24 hours.</p>",
        );
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"failures\"><thead><tr><th>When</th><th>Endpoint</th>\
         <th>Event</th><th>Attempt</th><th>Status</th><th>Error</th><th>Response</th><th>Row now</th>\
         </tr></thead><tbody>",
    );
    for f in failures {
        let _ = write!(
            out,
            "<tr class=\"failure\"><td>{}</td><td>{}</td><td><code>{}</code><br>{}</td>\
             <td class=\"num\">{}{}</td><td class=\"num\" data-field=\"status\">{}</td><td>{}</td>\
             <td><code data-field=\"response\">{}</code></td><td>{}</td></tr>",
            escape(&ago(now, f.at)),
            escape(&f.endpoint),
            escape(&f.event_id),
            escape(&f.event_code),
            f.attempt,
            if f.probe { " (probe)" } else { "" },
            f.response_status.map_or("-".into(), |s| s.to_string()),
            escape(f.error.as_deref().unwrap_or("")),
            escape(f.response_excerpt.as_deref().unwrap_or("")),
            escape(&f.row_status),
        );
    }
    out.push_str("</tbody></table></div>");
}

/// The whole page.
pub fn render(page: &Page) -> String {
    let mut out = String::with_capacity(16 * 1024);
    head(&mut out, true);
    let _ = write!(
        out,
        "<header><h1>outbox-relay</h1><p>{} &middot; version {} &middot; refreshes every {REFRESH_SECONDS} s</p></header><main>",
        escape(&clock(page.generated_at)),
        env!("CARGO_PKG_VERSION")
    );
    let paused = page
        .endpoints
        .iter()
        .filter(|e| e.state == "paused")
        .count();
    let _ = write!(
        out,
        "<h2>Endpoints <small data-field=\"summary\">({} endpoints, {paused} paused)</small></h2>",
        page.endpoints.len()
    );
    if page.endpoints.is_empty() {
        out.push_str("<p class=\"empty\">No endpoints in webhook.endpoints yet.</p>");
    } else {
        out.push_str("<div class=\"cards\">");
        for ep in &page.endpoints {
            endpoint_card(&mut out, page.generated_at, ep);
        }
        out.push_str("</div>");
    }
    out.push_str("<h2>Latest failures</h2>");
    failures_table(&mut out, page.generated_at, &page.failures);
    out.push_str(
        "</main><footer>Times in UTC. Pause or resume an endpoint with <code>outbox-relay pause \
         --endpoint NAME</code> / <code>resume</code>; replay dead rows with <code>outbox-relay \
         replay</code>.</footer></body></html>",
    );
    out
}

/// The form that asks for the admin token.
pub fn render_login(error: Option<&str>) -> String {
    let mut out = String::new();
    head(&mut out, false);
    out.push_str(
        "<header><h1>outbox-relay</h1><p>The status page shows receivers' responses: \
         it needs the admin token (api_admin_token).</p></header><main>\
         <form method=\"post\" action=\"/login\" id=\"login\"><label for=\"token\">Admin token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>",
    );
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"error\">{}</p>", escape(e));
    }
    out.push_str(
        "<button type=\"submit\">Open the status page</button></form></main></body></html>",
    );
    out
}

/// The page when the database cannot be read.
pub fn render_unavailable() -> String {
    let mut out = String::new();
    head(&mut out, true);
    out.push_str(
        "<header><h1>outbox-relay</h1><p>The database cannot be read right now; this page \
         tries again every few seconds.</p></header></body></html>",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<script>alert(\"x\" & 'y')</script>"),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("a\u{0}b\nc"), "a\u{FFFD}b\nc");
    }

    #[test]
    fn ages_read_like_people_write_them() {
        assert_eq!(age(4.2), "4s");
        assert_eq!(age(252.7), "4m 12s");
        assert_eq!(age(7300.0), "2h 1m");
        assert_eq!(age(90_000.0), "1d 1h");
        assert_eq!(age(-3.0), "0s");
    }

    #[test]
    fn database_values_are_escaped_on_the_page() {
        let now = Utc::now();
        let page = Page {
            generated_at: now,
            endpoints: vec![Endpoint {
                name: "crm<b>".into(),
                state: "paused".into(),
                paused_at: Some(now),
                paused_by: Some("auto".into()),
                failing_since: Some(now),
                last_probe_at: None,
                delivered_per_minute: vec![0; MINUTES as usize],
                failed_per_minute: vec![1; MINUTES as usize],
                pending: 3,
                in_flight: 0,
                dead: 0,
                oldest_pending_seconds: Some(61.0),
                held_keys: 2,
            }],
            failures: vec![Failure {
                at: now,
                endpoint: "crm<b>".into(),
                event_id: "evt_1".into(),
                event_code: "add_credits".into(),
                attempt: 2,
                probe: true,
                response_status: Some(503),
                error: Some("HTTP 503".into()),
                response_excerpt: Some("<img src=x onerror=alert(1)>".into()),
                row_status: "pending".into(),
            }],
        };
        let html = render(&page);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("crm<b>"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("data-field=\"pending\">3<"));
        assert!(html.contains("data-field=\"held_keys\" class=\"bad\">2<"));
        assert!(html.contains("data-field=\"failed\" class=\"bad\">15<"));
        assert!(html.contains("2 (probe)"));
        assert!(html.contains("<meta http-equiv=\"refresh\""));
        assert!(html.contains("name=\"viewport\""));
        // Nothing is loaded from anywhere.
        for external in ["<link", "<script", "src=\"http", "url("] {
            assert!(!html.contains(external), "{external}");
        }
    }
}
