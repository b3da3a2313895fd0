//! Reliability under faults and hostile input (SPEC §6): real relay
//! processes, real receivers, each test bounded in time and printing what it
//! measured. OUTBOX_RELIABILITY_LONG=1 runs the long forms (docs/reliability.md).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::delivery::{config_text, count_status, wait_status, SECRET};
use crate::process::{wait_synced, RelayProcess};
use crate::receiver::{signature_is_valid, Receiver, Reply};
use crate::support::{sql, wait_for, TestDb};

fn long() -> bool {
    std::env::var("OUTBOX_RELIABILITY_LONG").is_ok_and(|v| v == "1")
}

/// One line of figures, in a form docs/reliability.md quotes.
fn figures(test: &str, sent: usize, delivered: i64, unique: usize, requests: usize, extra: &str) {
    let lost = sent as i64 - unique as i64;
    println!(
        "FIGURES {test}: sent={sent} delivered_rows={delivered} received_unique={unique} lost={lost} duplicates={} {extra}",
        requests - unique
    );
}

/// Enqueues `n` events in transactions of at most 5,000.
async fn enqueue_many(c: &tokio_postgres::Client, n: i32) {
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(5000);
        c.execute(
            "SELECT webhook.enqueue('add_credits', jsonb_build_object('n', $1::int + g), 'k' || g)
               FROM generate_series(1, $2::int) g",
            &[&done, &batch],
        )
        .await
        .unwrap();
        done += batch;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_during_a_drain_loses_nothing() {
    let total: i32 = 20_000;
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let text = config_text(
        "lease = \"6s\"",
        &[("crm", &rx.url, "timeout = \"1s\"\nmax_in_flight = 16")],
    );
    let mut relay = RelayProcess::spawn(&db.url, &text);
    wait_synced(&c).await;
    enqueue_many(&c, total).await;

    // Events in flight at each kill (sent, their outcome not written): the
    // only ones allowed to arrive twice.
    let mut in_flight_at_kills: HashSet<String> = HashSet::new();
    for kill in 1..=3usize {
        let target = total as usize * kill / 4;
        wait_for(
            "the drain to progress",
            Duration::from_secs(120),
            || async { (rx.unique_ids() >= target).then_some(()) },
        )
        .await;
        relay.kill9();
        // The relay is gone: what the receiver has and the outbox does not
        // record as delivered was in flight.
        let received: HashSet<String> = rx.requests().into_iter().map(|r| r.id).collect();
        let rows = c
            .query(
                "SELECT event_id FROM webhook.outbox WHERE status = 'pending'",
                &[],
            )
            .await
            .unwrap();
        let in_flight: Vec<String> = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|id| received.contains(id))
            .collect();
        println!(
            "kill {kill} at {} received: {} events in flight",
            rx.unique_ids(),
            in_flight.len()
        );
        in_flight_at_kills.extend(in_flight);
        relay = RelayProcess::spawn(&db.url, &text);
    }
    wait_for("everything delivered", Duration::from_secs(180), || async {
        (count_status(&c, "delivered").await == total as i64).then_some(())
    })
    .await;
    relay.sigterm();
    tokio::task::block_in_place(|| relay.wait_exit(Duration::from_secs(30)));

    let dups = rx.duplicates();
    figures(
        "kill_9_x3",
        total as usize,
        count_status(&c, "delivered").await,
        rx.unique_ids(),
        rx.count(),
        &format!("in_flight_at_kills={}", in_flight_at_kills.len()),
    );
    assert_eq!(rx.unique_ids(), total as usize, "events lost");
    for id in &dups {
        assert!(
            in_flight_at_kills.contains(id),
            "{id} was sent twice but was not in flight at a kill"
        );
    }
}

#[tokio::test]
async fn a_receiver_outage_is_retried_with_visible_backoff() {
    let outage = if long() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(6)
    };
    let db = TestDb::new().await;
    let c = db.client().await;
    // Reserve a port, then free it: connections are refused until the
    // receiver comes back on the same port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let relay = crate::delivery::start(
        &db,
        crate::delivery::config(
            "",
            &[(
                "crm",
                &url,
                "retry_initial = \"500ms\"\nretry_max = \"2s\"\nmax_attempts = 50",
            )],
        ),
    )
    .await;
    let sent = 200;
    crate::delivery::enqueue(&c, sent).await;
    let down_since = Instant::now();
    wait_for(
        "failed attempts during the outage",
        Duration::from_secs(30),
        || async {
            let n: i64 = c
                .query_one(
                    "SELECT count(DISTINCT outbox_id) FROM webhook.attempts",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n == sent as i64).then_some(())
        },
    )
    .await;
    let remaining = outage.saturating_sub(down_since.elapsed());
    tokio::time::sleep(remaining).await; // the outage itself: the receiver stays away this long
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let rx = Receiver::on(listener, |_| Reply::Status(200)).await;
    wait_for("everything delivered", Duration::from_secs(60), || async {
        (count_status(&c, "delivered").await == sent as i64).then_some(())
    })
    .await;
    relay.shutdown().await;

    let (failed, max_attempt, refused): (i64, i32, i64) = {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE response_status IS NULL), max(attempt),
                        count(*) FILTER (WHERE error LIKE 'connection failed%')
                   FROM webhook.attempts",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    // Backoff: the gaps between one row's attempts grow.
    let gaps: Vec<f64> = c
        .query(
            "SELECT extract(epoch FROM started_at - lag(started_at) OVER (ORDER BY attempt))::float8
               FROM webhook.attempts WHERE outbox_id = (SELECT min(id) FROM webhook.outbox)
              ORDER BY attempt",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r.get::<_, Option<f64>>(0))
        .collect();
    figures(
        "receiver_outage",
        sent as usize,
        count_status(&c, "delivered").await,
        rx.unique_ids(),
        rx.count(),
        &format!("outage_s={} failed_attempts={failed} max_attempt={max_attempt} first_row_gaps_s={gaps:.2?}", outage.as_secs()),
    );
    assert_eq!(rx.unique_ids(), sent as usize);
    assert!(
        failed >= sent as i64 && refused == failed,
        "every failed attempt was a refused connection"
    );
    assert!(
        gaps.len() >= 2 && gaps[1] > gaps[0] * 1.2 || gaps.iter().any(|g| *g >= 1.0),
        "no backoff visible: {gaps:?}"
    );
}

// --- hostile receivers -------------------------------------------------------

/// A raw TCP server answering every connection with `respond`.
async fn raw_server<F, Fut>(respond: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move { respond(stream).await });
        }
    });
    url
}

/// Reads the request head (and whatever body arrived with it).
async fn read_request(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
}

/// An HTTPS server whose certificate nobody trusts.
async fn untrusted_tls_server() -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der())
            .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/hook",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_are_failed_attempts_with_clear_errors_and_bounded_memory() {
    const HUNDRED_MB: usize = 100 * 1024 * 1024;
    let huge = raw_server(|mut s| async move {
        read_request(&mut s).await;
        let head =
            format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {HUNDRED_MB}\r\n\r\n");
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < HUNDRED_MB && s.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
    })
    .await;
    let trickle = raw_server(|mut s| async move {
        read_request(&mut s).await;
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b"x").await.is_err() {
                return;
            }
        }
    })
    .await;
    let malformed = raw_server(|mut s| async move {
        read_request(&mut s).await;
        let _ = s.write_all(b"THIS IS NOT HTTP AT ALL\r\n\r\n").await;
    })
    .await;
    let non_utf8 = raw_server(|mut s| async move {
        read_request(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 8\r\nConnection: close\r\n\r\n\xff\xfe\x00ok\xc3\x28!")
            .await;
    })
    .await;
    let redirect = raw_server(|mut s| async move {
        read_request(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let tls = untrusted_tls_server().await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/hook", l.local_addr().unwrap().port())
    };
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("huge_body", huge, &["HTTP 500"]),
        ("trickle", trickle, &["timed out after 2s"]),
        ("malformed", malformed, &["invalid HTTP version"]),
        ("non_utf8", non_utf8, &["HTTP 500"]),
        (
            "redirect",
            redirect,
            &["HTTP 302 (redirects are not followed)"],
        ),
        ("untrusted_tls", tls, &["certificate"]),
        (
            "no_dns",
            "http://no-such-host.invalid/hook".to_string(),
            &["dns error", "timed out"],
        ),
        ("nothing_listens", closed_port, &["Connection refused"]),
    ];
    let endpoints: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(name, url, _)| (*name, url.as_str(), "max_attempts = 1\ntimeout = \"2s\""))
        .collect();

    let db = TestDb::new().await;
    let c = db.client().await;
    let mut relay = RelayProcess::spawn(&db.url, &config_text("", &endpoints));
    wait_synced(&c).await;
    crate::delivery::enqueue(&c, 1).await;
    wait_for(
        "every hostile endpoint's row dead",
        Duration::from_secs(60),
        || async { (count_status(&c, "dead").await == cases.len() as i64).then_some(()) },
    )
    .await;
    let peak_kb = relay.peak_rss_kb();
    relay.sigterm();
    tokio::task::block_in_place(|| relay.wait_exit(Duration::from_secs(30)));

    for (name, _, expected) in &cases {
        let row = c
            .query_one(
                "SELECT o.last_error, o.response_status, coalesce(length(o.response_body), 0), coalesce(octet_length(o.response_body), 0)
                   FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id) WHERE e.name = $1",
                &[name],
            )
            .await
            .unwrap();
        let error: String = row.get(0);
        let status: Option<i32> = row.get(1);
        let bytes: i32 = row.get(3);
        println!("hostile {name}: status={status:?} body_bytes={bytes} last_error={error:?}");
        assert!(
            expected.iter().any(|e| error.contains(e)),
            "{name}: unexpected last_error {error:?}"
        );
        assert!(
            bytes <= 4096 + 3 * 4,
            "{name}: body excerpt of {bytes} bytes"
        );
    }
    let body: String = c
        .query_one(
            "SELECT response_body FROM webhook.outbox JOIN webhook.endpoints USING (endpoint_id) WHERE name = 'non_utf8'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        body, "\u{fffd}\u{fffd}ok\u{fffd}(!",
        "invalid bytes replaced, NUL removed"
    );
    println!(
        "FIGURES hostile_receivers: endpoints={} relay_peak_rss_mb={:.1}",
        cases.len(),
        peak_kb as f64 / 1024.0
    );
    assert!(
        peak_kb < 100 * 1024,
        "relay peak RSS {peak_kb} kB while a 100 MB body was offered"
    );
}

// --- odd data -----------------------------------------------------------------

#[tokio::test]
async fn odd_payloads_arrive_byte_for_byte() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay =
        crate::delivery::start(&db, crate::delivery::config("", &[("crm", &rx.url, "")])).await;
    let name = "Zoë's \"Quoted\" Leads — 東京 🚀 \\ \u{1}\u{7}\t\n end";
    c.execute("INSERT INTO buyers VALUES ('odd', $1, 0)", &[&name])
        .await
        .unwrap();
    sql(&c, "INSERT INTO buyer_credits VALUES ('odd', 12.34)").await;
    // A 1 MB payload through the generic entry point.
    c.batch_execute(
        "SELECT webhook.enqueue('add_credits', jsonb_build_object('blob', repeat('é', 524288)))",
    )
    .await
    .unwrap();
    rx.wait_count(2, "both delivered", Duration::from_secs(30))
        .await;
    relay.shutdown().await;
    let reqs = rx.requests();
    let credits = reqs
        .iter()
        .find(|r| r.json()["eventCode"] == "add_credits")
        .unwrap();
    assert_eq!(credits.json()["buyerName"], name);
    assert!(signature_is_valid(SECRET, credits));
    let blob = reqs
        .iter()
        .find(|r| r.json().get("blob").is_some())
        .unwrap();
    assert_eq!(
        blob.json()["blob"].as_str().unwrap().chars().count(),
        524_288
    );
    assert!(blob.body.len() > 1_000_000);
    assert!(signature_is_valid(SECRET, blob));
    // The stored payload is the exact body sent, for both.
    for r in [credits, blob] {
        let stored: String = c
            .query_one(
                "SELECT payload::text FROM webhook.outbox WHERE event_id = $1",
                &[&r.id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored.as_bytes(), &r.body[..]);
    }
}

#[tokio::test]
async fn ten_thousand_events_in_one_transaction() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay =
        crate::delivery::start(&db, crate::delivery::config("", &[("crm", &rx.url, "")])).await;
    c.batch_execute(
        "BEGIN;
         INSERT INTO buyers SELECT 'b' || g, 'Buyer ' || g, 1 FROM generate_series(1, 10000) g;
         INSERT INTO buyer_credits SELECT 'b' || g, 5 FROM generate_series(1, 10000) g;
         COMMIT;",
    )
    .await
    .unwrap();
    wait_status(
        &c,
        "delivered",
        10_000,
        "10,000 delivered",
        Duration::from_secs(120),
    )
    .await;
    relay.shutdown().await;
    figures(
        "ten_thousand_in_one_tx",
        10_000,
        count_status(&c, "delivered").await,
        rx.unique_ids(),
        rx.count(),
        "",
    );
    assert_eq!(rx.unique_ids(), 10_000);
}

#[tokio::test]
async fn rows_of_a_disabled_endpoint_wait_until_it_is_enabled_again() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let on = crate::delivery::config(
        "",
        &[
            ("crm", &rx.url, "max_in_flight = 1"),
            ("other", &rx.url, ""),
        ],
    );
    // Rows are written for crm while it is enabled, then the config disables it.
    outbox_relay::migrate::sync_endpoints(&mut db.client().await, &on.endpoints)
        .await
        .unwrap();
    crate::delivery::enqueue(&c, 5).await;
    let off = crate::delivery::config(
        "",
        &[("crm", &rx.url, "enabled = false"), ("other", &rx.url, "")],
    );
    let relay = crate::delivery::start(&db, off).await;
    wait_for(
        "the enabled endpoint's rows delivered",
        Duration::from_secs(30),
        || async { (count_status(&c, "delivered").await == 5).then_some(()) },
    )
    .await;
    // New events are not routed to the disabled endpoint; its old rows wait.
    crate::delivery::enqueue(&c, 1).await;
    wait_for(
        "the new event delivered to other",
        Duration::from_secs(30),
        || async { (count_status(&c, "delivered").await == 6).then_some(()) },
    )
    .await;
    assert_eq!(
        count_status(&c, "pending").await,
        5,
        "the disabled endpoint's rows stay pending, not lost"
    );
    relay.shutdown().await;
    let relay = crate::delivery::start(&db, on).await;
    wait_for(
        "delivered once re-enabled",
        Duration::from_secs(30),
        || async { (count_status(&c, "delivered").await == 11).then_some(()) },
    )
    .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relay_processes_deliver_30000_without_duplicates() {
    let total: i32 = 30_000;
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let text =
        |name: &str| config_text(&format!("relay_name = \"{name}\""), &[("crm", &rx.url, "")]);
    let relays: Vec<RelayProcess> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| RelayProcess::spawn(&db.url, &text(n)))
        .collect();
    wait_synced(&c).await;
    let start = Instant::now();
    enqueue_many(&c, total).await;
    wait_for("30,000 delivered", Duration::from_secs(300), || async {
        (count_status(&c, "delivered").await == total as i64).then_some(())
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    for r in &relays {
        r.sigterm();
    }
    for mut r in relays {
        tokio::task::block_in_place(|| r.wait_exit(Duration::from_secs(30)));
    }
    let per_relay: Vec<(String, i64)> = c
        .query(
            "SELECT relay, count(*) FROM webhook.attempts GROUP BY relay ORDER BY relay",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    figures(
        "three_relays",
        total as usize,
        count_status(&c, "delivered").await,
        rx.unique_ids(),
        rx.count(),
        &format!("seconds={secs:.1} per_relay={per_relay:?} (debug build)"),
    );
    assert_eq!(rx.unique_ids(), total as usize);
    assert_eq!(
        rx.count(),
        total as usize,
        "duplicates: {:?}",
        &rx.duplicates()[..rx.duplicates().len().min(5)]
    );
    assert_eq!(per_relay.len(), 3, "all three relays delivered");
}
