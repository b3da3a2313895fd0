//! The status page at `GET /`, loaded in headless Chromium: what it shows is
//! checked against the database; with an admin token it asks for the token.
//! `STATUS_PAGE_SCREENSHOTS=DIR` keeps the screenshots in DIR
//! (`status-page.png` is the README's, `status-page-phone.png` a phone's).

use std::time::Duration;

use reqwest::StatusCode;
use tokio_postgres::Client;

use crate::delivery::{config, enqueue, start, wait_status};
use crate::receiver::Receiver;
use crate::support::{chromium, wait_for, TestDb};

const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);
const ADMIN: &str = "page-admin-token-0123456789";

/// The text of `data-field="field"` inside `html` (the first one).
fn field<'a>(html: &'a str, name: &str) -> &'a str {
    let marker = format!("data-field=\"{name}\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in {html}"));
    let rest = &html[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

/// The card of endpoint `name` in the rendered DOM.
fn card<'a>(dom: &'a str, name: &str) -> &'a str {
    let marker = format!("data-endpoint=\"{name}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no card for {name} in {dom}"));
    let end = dom[at..].find("</article>").unwrap();
    &dom[at..at + end]
}

async fn one_i64(c: &Client, sql: &str, name: &str) -> i64 {
    c.query_one(sql, &[&name]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_browser_shows_what_the_database_says() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // crm's receiver fails the first request of every event with 503: each
    // of its deliveries is one failed and one successful attempt.
    let rx = Receiver::failing_first(1, 503).await;
    let billing = Receiver::ok().await;
    let relay = start(
        &db,
        config(
            "",
            &[
                ("crm", &rx.url, "retry_initial = \"50ms\""),
                ("billing", &billing.url, ""),
            ],
        ),
    )
    .await;
    enqueue(&c, 5).await;
    wait_status(&c, "delivered", 10, "first rows delivered", WAIT).await;
    // billing paused by hand with rows waiting; a retired endpoint; a
    // failure whose response is markup that must show as text.
    c.batch_execute(
        "SELECT webhook.pause_endpoint('billing');
         INSERT INTO webhook.endpoints (name, url, events, enabled)
              VALUES ('legacy', 'http://127.0.0.1:9/', '{add_credits}', false);",
    )
    .await
    .unwrap();
    enqueue(&c, 3).await;
    wait_status(&c, "delivered", 13, "crm's new rows delivered", WAIT).await;
    c.batch_execute(
        "INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, response_body, error)
         SELECT min(o.id), 1, now(), 12, 503, '<b>down</b> & \"out\"', 'HTTP 503'
           FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id) WHERE e.name = 'crm'",
    )
    .await
    .unwrap();
    // The relay adds its attempts to webhook.endpoint_minutes about once a
    // second: wait until they are all there (16 by crm, 5 by billing).
    wait_for("the attempt counts written", WAIT, || async {
        let n: i64 = c
            .query_one(
                "SELECT coalesce(sum(delivered + failed), 0)::int8 FROM webhook.endpoint_minutes",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 21).then_some(())
    })
    .await;

    let url = format!("http://{}/", relay.http_addr);
    let out = chromium(&url, &["--dump-dom".into()], BROWSER_TIMEOUT).await;
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("<title>outbox-relay status</title>"), "{dom}");

    // Each endpoint's card against the database.
    for name in ["billing", "crm", "legacy"] {
        let card = card(&dom, name);
        let state: String = c
            .query_one(
                "SELECT state FROM webhook.endpoint_health WHERE endpoint = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(field(card, "state"), state, "{name}");
        // Rows by status, counted on the outbox; what is in flight is only
        // in the relays' reports (webhook.partitions), as webhook.backlog
        // shows it.
        for (f, count) in [
            (
                "pending",
                "SELECT count(*) FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id)
                  WHERE e.name = $1 AND o.status = 'pending'",
            ),
            (
                "dead",
                "SELECT count(*) FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id)
                  WHERE e.name = $1 AND o.status = 'dead'",
            ),
            (
                "in_flight",
                "SELECT in_flight FROM webhook.backlog WHERE endpoint = $1",
            ),
            (
                "held_keys",
                "SELECT count(*) FROM webhook.held_keys WHERE endpoint = $1",
            ),
        ] {
            let n = one_i64(&c, count, name).await;
            assert_eq!(field(card, f), n.to_string(), "{name} {f}");
        }
        // Attempts of the last 15 minutes, as the relay made them (the
        // markup failure below was written by hand, not attempted).
        for (f, failed) in [("delivered", false), ("failed", true)] {
            let n = one_i64(
                &c,
                &format!(
                    "SELECT count(*) FROM webhook.attempts a JOIN webhook.outbox o ON o.id = a.outbox_id
                       JOIN webhook.endpoints e USING (endpoint_id)
                      WHERE e.name = $1 AND (a.error IS NOT NULL) = {failed} AND a.relay IS NOT NULL
                        AND a.started_at > now() - interval '15 minutes'"
                ),
                name,
            )
            .await;
            assert_eq!(field(card, f), n.to_string(), "{name} {f}");
        }
    }
    assert_eq!(field(card(&dom, "billing"), "state"), "paused");
    assert_eq!(field(card(&dom, "billing"), "pending"), "3");
    assert!(field(card(&dom, "billing"), "paused").contains("by hand"));
    assert_eq!(field(card(&dom, "crm"), "failed"), "8");
    assert_eq!(field(card(&dom, "crm"), "delivered"), "8");
    assert_ne!(field(card(&dom, "billing"), "oldest_pending"), "-");
    assert_eq!(field(card(&dom, "legacy"), "state"), "disabled");

    // The failures, newest first: the one written by hand, its status and
    // its response as text, not markup; then the relay's 8.
    assert_eq!(dom.matches("class=\"failure\"").count(), 9, "{dom}");
    assert_eq!(field(&dom, "status"), "503");
    assert_eq!(
        field(&dom, "response"),
        "&lt;b&gt;down&lt;/b&gt; &amp; \"out\""
    );
    assert!(!dom.contains("<b>down</b>"));

    // A phone-sized screenshot renders (and, when asked, the README's).
    let scratch = tempfile::tempdir().unwrap();
    let dir = std::env::var("STATUS_PAGE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| scratch.path().to_path_buf());
    let shots = [
        (dir.join("status-page-phone.png"), "390,844"),
        (dir.join("status-page.png"), "1100,660"),
    ];
    for (path, size) in shots {
        let out = chromium(
            &url,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={size}"),
                "--hide-scrollbars".into(),
            ],
            BROWSER_TIMEOUT,
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "{path:?}");
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_page_asks_for_it() {
    let db = TestDb::new().await;
    let rx = Receiver::ok().await;
    let relay = start(
        &db,
        config(
            &format!("api_admin_token = \"{ADMIN}\""),
            &[("crm", &rx.url, "api_token = \"crm-only-token-0123456789\"")],
        ),
    )
    .await;
    let url = format!("http://{}/", relay.http_addr);

    // The browser gets the form, not the data.
    let out = chromium(&url, &["--dump-dom".into()], BROWSER_TIMEOUT).await;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("id=\"login\""), "{dom}");
    assert!(!dom.contains("data-endpoint"), "{dom}");

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |headers: Vec<(&'static str, String)>| {
        let mut req = http.get(&url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let login = |token: &str| {
        http.post(format!("{url}login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    assert_eq!(
        get(vec![]).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // An endpoint's token reads only its own events: not the page.
    for wrong in ["crm-only-token-0123456789", "not-the-token-0123456789"] {
        let r = login(wrong).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.unwrap().contains("not the admin token"));
        let r = get(vec![("authorization", format!("Bearer {wrong}"))])
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // The admin token: a session cookie that is not the token itself.
    let r = login(ADMIN).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains(ADMIN));
    let session = cookie.split(';').next().unwrap().to_string();
    let r = get(vec![("cookie", session.clone())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(r.text().await.unwrap().contains("data-endpoint=\"crm\""));
    let last = if session.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &session[..session.len() - 1]);
    assert_eq!(
        get(vec![("cookie", forged)]).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let r = get(vec![("authorization", format!("Bearer {ADMIN}"))])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    relay.shutdown().await;
}
