//! The delivery engine end to end: app writes through the triggers, a relay
//! (in-process or the real binary), real HTTP receivers.

use std::time::Duration;

use outbox_relay::config::Config;
use outbox_relay::relay::{self, Relay};
use serde_json::json;
use tokio_postgres::Client;

use crate::receiver::{signature_is_valid, Receiver, Reply};
use crate::support::{sql, wait_for, TestDb};

pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const ALL_EVENTS: &str = r#"["user_credits_zero", "post_code_change", "add_credits"]"#;
const WAIT: Duration = Duration::from_secs(30);

/// Config text: relay-wide `top` lines, then one endpoint per (name, url, extra lines).
pub fn config_text(top: &str, endpoints: &[(&str, &str, &str)]) -> String {
    // Top-level keys first: `top` may open a table such as [ssrf_guard].
    let mut text = String::from("listen = \"127.0.0.1:0\"\n");
    if !top.contains("poll_interval") {
        text.push_str("poll_interval = \"200ms\"\n");
    }
    text.push_str(top);
    text.push('\n');
    for (name, url, extra) in endpoints {
        text.push_str(&format!(
            "[[endpoint]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = {ALL_EVENTS}\nsecret = \"{SECRET}\"\n{extra}\n"
        ));
    }
    text
}

pub fn config(top: &str, endpoints: &[(&str, &str, &str)]) -> Config {
    Config::parse(&config_text(top, endpoints), "test.toml", &|_| None).expect("test config")
}

pub async fn start(db: &TestDb, cfg: Config) -> Relay {
    relay::start(cfg, db.url.clone())
        .await
        .expect("relay starts")
}

/// A relay with one endpoint, `name` at `url`, with `extra` config lines.
pub async fn start_one(db: &TestDb, name: &str, url: &str, extra: &str) -> Relay {
    start(db, config("", &[(name, url, extra)])).await
}

/// Enqueues `n` generic events in one transaction.
pub async fn enqueue(c: &Client, n: i32) {
    c.execute(
        "SELECT webhook.enqueue('add_credits', jsonb_build_object('n', g), 'k' || g) FROM generate_series(1, $1) g",
        &[&n],
    )
    .await
    .unwrap();
}

/// Waits until `n` rows have `status`, or fails the test after `timeout`.
pub async fn wait_status(c: &Client, status: &str, n: i64, what: &str, timeout: Duration) {
    wait_for(what, timeout, || async {
        (count_status(c, status).await == n).then_some(())
    })
    .await
}

pub async fn count_status(c: &Client, status: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM webhook.outbox WHERE status = $1",
        &[&status],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn app_writes_arrive_signed_with_the_exact_bodies() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay = start_one(&db, "crm", &rx.url, "").await;

    c.batch_execute(
        "INSERT INTO buyers VALUES ('0000', 'test', 10);
         BEGIN;
         INSERT INTO buyer_postcodes VALUES ('0000', 'GN'), ('0000', 'AB'), ('0000', 'BN');
         COMMIT;",
    )
    .await
    .unwrap();
    sql(&c, "INSERT INTO buyer_credits VALUES ('0000', 100)").await;
    sql(
        &c,
        "UPDATE buyer_credits SET balance = 0 WHERE buyer_id = '0000'",
    )
    .await;
    rx.wait_count(3, "three webhooks", WAIT).await;

    let mut bodies: Vec<serde_json::Value> = rx.requests().iter().map(|r| r.json()).collect();
    bodies.sort_by_key(|b| b["eventCode"].as_str().unwrap().to_string());
    assert_eq!(
        bodies,
        [
            json!({"buyerId": "0000", "buyerName": "test", "postCodeList": ["AB", "BN", "GN"], "topUpAmount": 100, "eventCode": "add_credits"}),
            json!({"buyerId": "0000", "businessName": "test", "postCodeList": ["AB", "BN", "GN"], "eventCode": "post_code_change"}),
            json!({"buyerId": "0000", "businessName": "test", "postCodeList": ["AB", "BN", "GN"], "remainingCredits": 0, "eventCode": "user_credits_zero"}),
        ]
    );
    for r in rx.requests() {
        assert!(signature_is_valid(SECRET, &r), "bad signature on {}", r.id);
        assert!(r.id.starts_with("evt_"));
        let ts: i64 = r.timestamp.parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - ts).abs() < 60, "timestamp {ts} is not now");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.headers["user-agent"],
            format!("outbox-relay/{}", env!("CARGO_PKG_VERSION"))
        );
    }
    // The outcome is on the rows and in webhook.attempts.
    wait_status(&c, "delivered", 3, "rows delivered", WAIT).await;
    let rows = c
        .query(
            "SELECT o.event_id, o.attempts, o.response_status, o.response_body, o.response_ms, o.last_error,
                    o.delivered_at IS NOT NULL, o.lease_expires_at IS NULL, o.payload::text,
                    (SELECT count(*) FROM webhook.attempts a WHERE a.outbox_id = o.id AND a.response_status = 200)
               FROM webhook.outbox o",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let event_id: String = row.get(0);
        assert_eq!(row.get::<_, i32>(1), 1);
        assert_eq!(row.get::<_, Option<i32>>(2), Some(200));
        assert_eq!(
            row.get::<_, Option<String>>(3).as_deref(),
            Some("answer 200")
        );
        assert!(row.get::<_, Option<i32>>(4).unwrap() >= 0);
        assert_eq!(row.get::<_, Option<String>>(5), None);
        assert!(row.get::<_, bool>(6) && row.get::<_, bool>(7));
        assert_eq!(row.get::<_, i64>(9), 1, "one attempt row");
        // The payload column is the exact body that was sent.
        let sent = rx
            .requests()
            .into_iter()
            .find(|r| r.id == event_id)
            .unwrap();
        assert_eq!(row.get::<_, String>(8).as_bytes(), &sent.body[..]);
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn two_failures_then_success_is_three_attempts_and_delivered() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::failing_first(2, 503).await;
    let relay = start_one(
        &db,
        "flaky",
        &rx.url,
        "retry_initial = \"50ms\"\nretry_max = \"200ms\"",
    )
    .await;
    enqueue(&c, 1).await;
    wait_status(&c, "delivered", 1, "delivered", WAIT).await;
    let row = c
        .query_one(
            "SELECT attempts, response_status, last_error FROM webhook.outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 3);
    assert_eq!(row.get::<_, Option<i32>>(1), Some(200));
    assert_eq!(row.get::<_, Option<String>>(2), None);
    let attempts: Vec<(i32, Option<i32>, Option<String>)> = c
        .query(
            "SELECT attempt, response_status, error FROM webhook.attempts ORDER BY attempt",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(503), Some("HTTP 503".into())),
            (2, Some(503), Some("HTTP 503".into())),
            (3, Some(200), None)
        ]
    );
    let ids: Vec<String> = rx.requests().iter().map(|r| r.id.clone()).collect();
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "retries keep the webhook-id"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn an_always_failing_endpoint_ends_dead_after_max_attempts() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::start(|_| Reply::Status(500)).await;
    let relay = start_one(
        &db,
        "down",
        &rx.url,
        "max_attempts = 3\nretry_initial = \"20ms\"\nretry_max = \"50ms\"",
    )
    .await;
    enqueue(&c, 2).await;
    wait_status(&c, "dead", 2, "dead", WAIT).await;
    let rows = c
        .query("SELECT attempts, last_error FROM webhook.outbox", &[])
        .await
        .unwrap();
    for r in rows {
        assert_eq!(r.get::<_, i32>(0), 3);
        let err: String = r.get(1);
        assert!(
            err.contains("HTTP 500") && err.contains("max_attempts"),
            "{err}"
        );
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM webhook.attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
    assert_eq!(rx.count(), 6);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_no_retry_status_is_dead_at_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::start(|_| Reply::Status(410)).await;
    let relay = start_one(&db, "gone", &rx.url, "retry_initial = \"20ms\"").await;
    enqueue(&c, 1).await;
    wait_status(&c, "dead", 1, "dead", WAIT).await;
    assert_eq!(rx.count(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::start(|r| {
        if r.nth == 1 {
            Reply::WithHeaders(429, vec![("retry-after", "2".into())])
        } else {
            Reply::Status(200)
        }
    })
    .await;
    // Without Retry-After the retry would come after 10 minutes at least.
    let relay = start_one(
        &db,
        "busy",
        &rx.url,
        "retry_initial = \"20m\"\nretry_max = \"1h\"",
    )
    .await;
    enqueue(&c, 1).await;
    wait_status(&c, "delivered", 1, "delivered", WAIT).await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "retried after {gap:?}, before Retry-After"
    );
    let err: Option<String> = c
        .query_one("SELECT error FROM webhook.attempts WHERE attempt = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(err.as_deref(), Some("HTTP 429"));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_rolled_back_transaction_sends_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay = start_one(&db, "crm", &rx.url, "").await;
    c.batch_execute(
        "INSERT INTO buyers VALUES ('rb', 'Rollback', 0);
         BEGIN;
         INSERT INTO buyer_credits VALUES ('rb', 50);
         INSERT INTO buyer_postcodes VALUES ('rb', 'X1');
         ROLLBACK;",
    )
    .await
    .unwrap();
    // A committed marker afterwards: once it arrives, anything from the
    // rolled-back transaction would have arrived before it.
    sql(
        &c,
        "SELECT webhook.enqueue('add_credits', '{\"marker\": true}')",
    )
    .await;
    rx.wait_count(1, "the marker", WAIT).await;
    relay.shutdown().await;
    let bodies: Vec<serde_json::Value> = rx.requests().iter().map(|r| r.json()).collect();
    assert_eq!(bodies, [json!({"marker": true})]);
}

#[tokio::test]
async fn custom_headers_previous_secrets_and_no_redirects() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let target = Receiver::ok().await;
    let target_url = target.url.clone();
    let rx =
        Receiver::start(move |_| Reply::WithHeaders(302, vec![("location", target_url.clone())]))
            .await;
    let old = "whsec_MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIz";
    let relay = start(
        &db,
        config(
            "",
            &[(
                "crm",
                &rx.url,
                &format!("max_attempts = 1\nprevious_secrets = [\"{old}\"]\n[endpoint.headers]\nX-Team = \"billing\""),
            )],
        ),
    )
    .await;
    enqueue(&c, 1).await;
    wait_status(&c, "dead", 1, "dead", WAIT).await;
    let r = &rx.requests()[0];
    assert_eq!(r.headers["x-team"], "billing");
    assert_eq!(
        r.signature.split(' ').count(),
        2,
        "one signature per secret"
    );
    assert!(signature_is_valid(SECRET, r) && signature_is_valid(old, r));
    assert_eq!(target.count(), 0, "the redirect was not followed");
    let (status, err): (Option<i32>, String) = {
        let row = c
            .query_one(
                "SELECT response_status, last_error FROM webhook.outbox",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(status, Some(302));
    assert!(err.contains("redirects are not followed"), "{err}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_slow_endpoint_does_not_slow_another() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let slow = Receiver::start(|_| Reply::After(Duration::from_secs(5), 200)).await;
    let fast = Receiver::ok().await;
    let relay = start(
        &db,
        config(
            "",
            &[
                ("slow", &slow.url, "max_in_flight = 4"),
                ("fast", &fast.url, "max_in_flight = 4"),
            ],
        ),
    )
    .await;
    enqueue(&c, 200).await;
    // All 200 reach the fast endpoint while the slow one has not answered a
    // single request yet (its first answer comes 5 s after its first request).
    fast.wait_count(200, "fast endpoint done", Duration::from_secs(60))
        .await;
    let slow_delivered: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook.outbox JOIN webhook.endpoints USING (endpoint_id)
              WHERE name = 'slow' AND status = 'delivered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slow_delivered, 0,
        "the fast endpoint waited for the slow one"
    );
    assert!(
        slow.count() <= 4,
        "max_in_flight caps the slow endpoint: {}",
        slow.count()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn rate_limit_spaces_requests() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay = start_one(&db, "limited", &rx.url, "rate_limit = 20.0\nburst = 1").await;
    enqueue(&c, 21).await;
    rx.wait_count(21, "all delivered", WAIT).await;
    let reqs = rx.requests();
    let span = reqs.last().unwrap().at - reqs[0].at;
    // 20 gaps of 50 ms each at 20 requests per second.
    assert!(
        span >= Duration::from_millis(900),
        "21 requests took only {span:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn two_relays_deliver_2000_events_without_duplicates() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let a = start(&db, config("relay_name = \"a\"", &[("crm", &rx.url, "")])).await;
    let b = start(&db, config("relay_name = \"b\"", &[("crm", &rx.url, "")])).await;
    // The endpoint's 16 partitions end shared, eight each (the first relay
    // took them all, and gives half back once it sees the second).
    wait_for("the partitions shared", Duration::from_secs(30), || async {
        let shares: Vec<i64> = c
            .query(
                "SELECT count(*) FROM webhook.partitions GROUP BY owner ORDER BY owner",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (shares == [8, 8]).then_some(())
    })
    .await;
    for _ in 0..10 {
        enqueue(&c, 200).await;
    }
    wait_status(
        &c,
        "delivered",
        2000,
        "2000 delivered",
        Duration::from_secs(120),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(rx.unique_ids(), 2000);
    assert_eq!(rx.count(), 2000, "duplicates: {:?}", rx.duplicates());
    let relays: Vec<String> = c
        .query(
            "SELECT DISTINCT relay FROM webhook.attempts ORDER BY relay",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(relays, ["a", "b"], "both relays took part");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_releases_waiting_rows() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::start(|_| Reply::After(Duration::from_millis(700), 200)).await;
    let relay = start_one(
        &db,
        "slowish",
        &rx.url,
        "max_in_flight = 2\nrate_limit = 2.0\nburst = 2",
    )
    .await;
    enqueue(&c, 10).await;
    rx.wait_count(2, "requests in flight", WAIT).await;
    relay.shutdown().await;
    // The requests in flight finished and were recorded; nothing is left claimed.
    assert!(count_status(&c, "delivered").await >= 2);
    assert_eq!(count_status(&c, "in_flight").await, 0);
    let pending = count_status(&c, "pending").await;
    assert_eq!(count_status(&c, "delivered").await + pending, 10);
    let unattempted: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook.outbox WHERE status = 'pending' AND attempts = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unattempted, pending,
        "released rows do not count as attempts"
    );
}

#[tokio::test]
async fn the_shutdown_deadline_releases_requests_still_in_flight() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::start(|_| Reply::After(Duration::from_secs(60), 200)).await;
    let relay = start(
        &db,
        config(
            "shutdown_timeout = \"500ms\"\nlease = \"90s\"",
            &[("hang", &rx.url, "timeout = \"60s\"")],
        ),
    )
    .await;
    enqueue(&c, 3).await;
    rx.wait_count(3, "requests in flight", WAIT).await;
    tokio::time::timeout(Duration::from_secs(15), relay.shutdown())
        .await
        .expect("shutdown within its deadline");
    assert_eq!(count_status(&c, "pending").await, 3);
    let attempts: i64 = c
        .query_one("SELECT sum(attempts) FROM webhook.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 0);
}

#[tokio::test]
async fn ready_only_once_the_partitions_are_taken() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay = start_one(&db, "crm", &rx.url, "").await;
    let readyz = format!("http://{}/readyz", relay.http_addr);
    let http = reqwest::Client::new();
    // Polled from the start: the first 200 already means a relay that reads.
    wait_for("ready", WAIT, || async {
        (http.get(&readyz).send().await.unwrap().status() == 200).then_some(())
    })
    .await;
    let owned: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook.partitions p JOIN webhook.endpoints e USING (endpoint_id)
              WHERE e.name = 'crm' AND p.owner IS NOT NULL AND p.lease_expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        owned, 16,
        "every partition owned when /readyz first answers 200"
    );
}

/// A relay stopped the moment it is ready (a restart right after a start)
/// leaves no partition leased to itself: the next relay takes them at once
/// instead of after the lease.
#[tokio::test]
async fn a_relay_stopped_as_soon_as_it_is_ready_gives_every_partition_back() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let http = reqwest::Client::new();
    for round in 0..8 {
        let relay = start_one(&db, "crm", &rx.url, "").await;
        let readyz = format!("http://{}/readyz", relay.http_addr);
        wait_for("ready", WAIT, || async {
            let s = http.get(&readyz).send().await.ok()?.status();
            (s == 200).then_some(())
        })
        .await;
        relay.shutdown().await;
        let leased: i64 = c
            .query_one(
                "SELECT count(*) FROM webhook.partitions WHERE owner IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            leased, 0,
            "round {round}: partitions left leased by a stopped relay"
        );
    }
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::failing_first(1, 500).await;
    let relay = start_one(&db, "crm", &rx.url, "retry_initial = \"20ms\"").await;
    enqueue(&c, 3).await;
    wait_status(&c, "delivered", 3, "delivered", WAIT).await;
    let base = format!("http://{}", relay.http_addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wait_for("ready", WAIT, || async {
        (http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200)
            .then_some(())
    })
    .await;
    let text = wait_for("metrics", WAIT, || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains(r#"outbox_relay_attempts_total{endpoint="crm",outcome="delivered"} 3"#)
            .then_some(text)
    })
    .await;
    for needle in [
        r#"outbox_relay_attempts_total{endpoint="crm",outcome="retry"} 3"#,
        r#"outbox_relay_attempt_duration_seconds_count{endpoint="crm"} 6"#,
        r#"outbox_relay_outbox_rows{endpoint="crm",status="pending"}"#,
        r#"outbox_relay_oldest_pending_seconds{endpoint="crm"}"#,
        "outbox_relay_database_up 1",
        "outbox_relay_listener_up 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    relay.shutdown().await;
}
