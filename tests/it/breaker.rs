//! The circuit breaker: an endpoint whose receiver is down is paused instead
//! of running its rows into `dead`, probed once per interval by all relays
//! together, and resumed by the first probe that succeeds; hand pauses by
//! command and SQL, across a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::delivery::{config, config_text, count_status, enqueue, start, start_one, wait_status};
use crate::process::RelayProcess;
use crate::receiver::{Receiver, Reply};
use crate::support::{cli, stderr, stdout, wait_for, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// The endpoint's state, paused_by and failing_since-to-paused_at seconds
/// from webhook.endpoint_health.
async fn health(c: &Client, endpoint: &str) -> (String, Option<String>, Option<f64>) {
    let row = c
        .query_one(
            "SELECT state, paused_by, extract(epoch FROM paused_at - failing_since)::float8
               FROM webhook.endpoint_health WHERE endpoint = $1",
            &[&endpoint],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn wait_state(c: &Client, endpoint: &str, state: &str, timeout: Duration) {
    wait_for(&format!("{endpoint} {state}"), timeout, || async {
        (health(c, endpoint).await.0 == state).then_some(())
    })
    .await
}

async fn one_i64(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// A receiver that answers 503 until `up` is set, then 200.
async fn switchable() -> (Receiver, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let rx = Receiver::start(move |_| {
        Reply::Status(if flag.load(Ordering::SeqCst) {
            200
        } else {
            503
        })
    })
    .await;
    (rx, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_20s_pauses_probes_once_per_interval_and_loses_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (rx, up) = switchable().await;
    // Two relays on one database: the pause and the probe turns are theirs
    // to share. Without the breaker, 50 attempts at most 500 ms apart would
    // run out well within the 20 s.
    let endpoint = "pause_after = \"2s\"\nprobe_interval = \"1s\"\nmax_attempts = 50\n\
                    retry_initial = \"100ms\"\nretry_max = \"500ms\"";
    // One in this process, one the real binary, whose log is read below.
    let relay = start(
        &db,
        config("relay_name = \"r1\"", &[("crm", &rx.url, endpoint)]),
    )
    .await;
    let process = RelayProcess::spawn_with_env(
        &db.url,
        &config_text("relay_name = \"r2\"", &[("crm", &rx.url, endpoint)]),
        &[("RUST_LOG", "info")],
    );
    let t0 = Instant::now();
    enqueue(&c, 20).await;

    wait_state(&c, "crm", "paused", Duration::from_secs(15)).await;
    let paused_seen = Instant::now();
    let (_, by, failing_for) = health(&c, "crm").await;
    assert_eq!(by.as_deref(), Some("auto"));
    let failing_for = failing_for.expect("paused_at and failing_since are set");
    assert!(
        (2.0..4.0).contains(&failing_for),
        "paused after {failing_for}s of failures, pause_after is 2s"
    );
    // Rows written while paused wait too.
    enqueue(&c, 10).await;
    // Attempts spent so far (an attempt counts once its outcome is written,
    // so this is taken once the first probe is recorded: by then what was in
    // flight at the pause has been written back); probes must not add to them.
    wait_for("the first probe recorded", WAIT, || async {
        (one_i64(&c, "SELECT count(*) FROM webhook.attempts WHERE probe").await >= 1).then_some(())
    })
    .await;
    let spent = one_i64(&c, "SELECT sum(attempts)::int8 FROM webhook.outbox").await;

    // The outage lasts 20 s from the first event. Meanwhile, check every
    // 100 ms that nothing is dead (one probe at a time is checked at the
    // receiver below).
    while t0.elapsed() < Duration::from_secs(20) {
        assert_eq!(count_status(&c, "dead").await, 0, "a row went dead");
        assert_eq!(health(&c, "crm").await.0, "paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What an operator sees meanwhile: `status --json` and endpoint_health.
    let out = cli(&["status", "--json", "--database-url", &db.url], &[]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let crm = &report["endpoints"][0];
    assert_eq!(crm["state"], "paused", "{crm}");
    assert_eq!(crm["paused_by"], "auto", "{crm}");
    assert!(
        crm["last_probe_at"].is_string() && crm["failing_since"].is_string(),
        "{crm}"
    );
    assert!(crm["last_5m"]["probes"].as_i64().unwrap() >= 5, "{crm}");
    let waiting =
        crm["rows"]["pending"].as_i64().unwrap() + crm["rows"]["in_flight"].as_i64().unwrap();
    assert_eq!(waiting, 30, "{crm}");
    let probes_seen = one_i64(
        &c,
        "SELECT probes FROM webhook.endpoint_health WHERE endpoint = 'crm'",
    )
    .await;
    assert!(
        probes_seen >= 5,
        "endpoint_health shows {probes_seen} probes"
    );
    let spent_paused = one_i64(&c, "SELECT sum(attempts)::int8 FROM webhook.outbox").await;
    assert_eq!(spent_paused, spent, "probes spent the rows' attempts");
    up.store(true, Ordering::SeqCst);
    let up_at = Instant::now();

    wait_status(&c, "delivered", 30, "every event delivered", WAIT).await;
    let drained = up_at.elapsed();
    assert_eq!(count_status(&c, "dead").await, 0);
    wait_state(&c, "crm", "running", Duration::from_secs(5)).await;

    // What the receiver saw while the endpoint was paused (a margin for a
    // request already under way when it paused): probes, at most one per
    // second from both relays together.
    let window_start = paused_seen + Duration::from_millis(200);
    let probes: Vec<Instant> = rx
        .requests()
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > window_start && *at < up_at)
        .collect();
    let window = up_at - window_start;
    assert!(
        probes.len() as f64 <= window.as_secs_f64() + 1.0,
        "{} requests in {window:?} while paused",
        probes.len()
    );
    assert!(
        probes.len() >= 8,
        "only {} probes in {window:?} while paused",
        probes.len()
    );
    for pair in probes.windows(2) {
        let gap = pair[1] - pair[0];
        // The interval is kept by the database's clock at claim time; the
        // request follows the claim within milliseconds.
        assert!(
            gap >= Duration::from_millis(800),
            "two probes {gap:?} apart"
        );
    }
    let min_gap = probes
        .windows(2)
        .map(|p| p[1] - p[0])
        .min()
        .unwrap_or_default();
    let recorded = one_i64(&c, "SELECT count(*) FROM webhook.attempts WHERE probe").await;
    eprintln!(
        "FIGURES breaker: paused after {failing_for:.1} s of failures; {} probes in {:.1} s while \
         paused (closest two {min_gap:?} apart), {recorded} recorded as probes; attempts spent while \
         paused: {}; 30 events delivered {drained:?} after the receiver returned; dead: 0",
        probes.len(),
        window.as_secs_f64(),
        spent_paused - spent
    );
    assert!(
        recorded >= probes.len() as i64,
        "{recorded} probes recorded"
    );
    // The backlog drained once the receiver was back: the first probe after
    // it, then the rows at their normal pace.
    assert!(drained < Duration::from_secs(10), "drained in {drained:?}");

    // The relay's metrics follow within a report interval.
    let want = [
        "outbox_relay_endpoint_state_changes_total{endpoint=\"crm\",change=\"paused\"} 1",
        "outbox_relay_endpoint_state_changes_total{endpoint=\"crm\",change=\"resumed\"} 1",
        "outbox_relay_endpoint_paused{endpoint=\"crm\"} 0",
    ];
    wait_for(
        "the metrics to show the pause and the resume",
        WAIT,
        || async {
            let metrics = relay.metrics.encode();
            want.iter().all(|l| metrics.contains(l)).then_some(())
        },
    )
    .await;
    relay.shutdown().await;
    // Each relay logs a change of state once (the process within a report
    // interval of it), and no probe at info level.
    wait_for("the relay process to log the resume", WAIT, || async {
        process.log().contains("endpoint resumed").then_some(())
    })
    .await;
    let log = process.log();
    let lines = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("endpoint paused"), 1, "{log}");
    assert_eq!(lines("endpoint resumed"), 1, "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("probe") && !l.contains("endpoint paused"))
            .count(),
        0,
        "{log}"
    );
}

#[tokio::test]
async fn a_hand_pause_holds_rows_across_a_restart_until_resumed() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    // Probes every 200 ms if this were the breaker's pause: a hand pause
    // sends none.
    let cfg = || config("", &[("crm", &rx.url, "probe_interval = \"200ms\"")]);
    let relay = start(&db, cfg()).await;
    let url = ["--database-url", &db.url];

    let out = cli(&[&["pause", "--endpoint", "crm"][..], &url].concat(), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("paused endpoint \"crm\""),
        "{}",
        stdout(&out)
    );
    enqueue(&c, 5).await;
    let held = |what: &'static str| {
        let c = &c;
        let rx = &rx;
        async move {
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                assert_eq!(rx.count(), 0, "{what}: a request was sent");
                assert_eq!(
                    one_i64(c, "SELECT count(*) FROM webhook.outbox WHERE status = 'pending' AND attempts = 0").await,
                    5,
                    "{what}: rows left pending"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    held("paused").await;
    assert!(relay
        .metrics
        .encode()
        .contains("outbox_relay_endpoint_paused{endpoint=\"crm\"} 1"));
    relay.shutdown().await;

    // A new relay finds the endpoint paused.
    let relay = start(&db, cfg()).await;
    held("after a restart").await;
    let out = cli(&[&["status", "--json"][..], &url].concat(), &[]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let crm = &report["endpoints"][0];
    assert_eq!(crm["state"], "paused", "{crm}");
    assert_eq!(crm["paused_by"], "hand", "{crm}");

    let out = cli(&[&["resume", "--endpoint", "crm"][..], &url].concat(), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("resumed endpoint \"crm\""),
        "{}",
        stdout(&out)
    );
    wait_status(&c, "delivered", 5, "rows delivered after resume", WAIT).await;
    assert_eq!(rx.count(), 5);
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.attempts WHERE probe").await,
        0
    );
    relay.shutdown().await;

    // Unknown names are refused with the function's message.
    let out = cli(&[&["pause", "--endpoint", "nope"][..], &url].concat(), &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("webhook.pause_endpoint: no endpoint named 'nope'"),
        "{}",
        stderr(&out)
    );
    // The SQL functions say whether they changed anything.
    for (sql, expected) in [
        ("SELECT webhook.pause_endpoint('crm')", true),
        ("SELECT webhook.pause_endpoint('crm')", false),
        ("SELECT webhook.resume_endpoint('crm')", true),
        ("SELECT webhook.resume_endpoint('crm')", false),
    ] {
        let got: bool = c.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(got, expected, "{sql}");
    }
}

#[tokio::test]
async fn pause_after_off_never_pauses() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::start(|_| Reply::Status(503)).await;
    let relay = start_one(
        &db,
        "crm",
        &rx.url,
        "pause_after = \"off\"\nmax_attempts = 3\nretry_initial = \"50ms\"\nretry_max = \"50ms\"",
    )
    .await;
    enqueue(&c, 2).await;
    // With the breaker off, the rows run out of attempts as before, and the
    // failing run is still kept (status shows it), two seconds and more.
    wait_status(&c, "dead", 2, "rows dead", WAIT).await;
    wait_for("failing for 2s", WAIT, || async {
        let row = c
            .query_one(
                "SELECT coalesce(now() - failing_since > interval '2s', false) FROM webhook.endpoints",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    assert_eq!(health(&c, "crm").await.0, "running");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_pause_by_the_breaker_outlives_its_relay_and_the_next_relay_probes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (rx, up) = switchable().await;
    let endpoint = "pause_after = \"1s\"\nprobe_interval = \"500ms\"\nretry_initial = \"100ms\"\n\
                    retry_max = \"200ms\"\nmax_attempts = 100";
    let relay = start_one(&db, "crm", &rx.url, endpoint).await;
    enqueue(&c, 5).await;
    wait_state(&c, "crm", "paused", WAIT).await;
    relay.shutdown().await;

    // No relay runs: the pause stays in the database.
    assert_eq!(health(&c, "crm").await.0, "paused");
    up.store(true, Ordering::SeqCst);
    let relay = start_one(&db, "crm", &rx.url, endpoint).await;
    // The new relay finds the breaker's pause, probes, and the first
    // delivered probe resumes the endpoint.
    wait_status(&c, "delivered", 5, "delivered after the restart", WAIT).await;
    wait_state(&c, "crm", "running", WAIT).await;
    assert_eq!(count_status(&c, "dead").await, 0);
    let delivered_probes = one_i64(
        &c,
        "SELECT count(*) FROM webhook.attempts WHERE probe AND error IS NULL",
    )
    .await;
    assert_eq!(delivered_probes, 1);
    relay.shutdown().await;
}
