//! The way out to receivers: HTTPS to a receiver signed by a private CA that
//! demands a client certificate, and an egress proxy (config or environment)
//! that counts the tunnels it opens, with the SSRF guard around it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::delivery::{config, config_text, enqueue, start, wait_status};
use crate::process::RelayProcess;
use crate::receiver::{Receiver, Reply};
use crate::support::{Pki, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// A private CA, a receiver it signed that wants a client certificate, and
/// the files the relay's config names.
struct Https {
    rx: Receiver,
    refused: Arc<AtomicUsize>,
    ca: String,
    cert: String,
    key: String,
    _pki: Pki,
}

async fn https_receiver(host: &str) -> Https {
    let pki = Pki::new("receiver");
    let server = pki.server();
    let client = pki.client("outbox-relay");
    let (rx, refused) = Receiver::https(pki.server_demanding_client_certs(&server), host, |_| {
        Reply::Status(200)
    })
    .await;
    Https {
        rx,
        refused,
        ca: pki.write("ca.pem", &pki.ca_pem),
        cert: pki.write("relay.crt", &client.cert_pem),
        key: pki.write("relay.key", &client.key_pem),
        _pki: pki,
    }
}

impl Https {
    fn trust(&self) -> String {
        format!("ca_file = \"{}\"\n", self.ca)
    }

    fn identity(&self) -> String {
        format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            self.cert, self.key
        )
    }
}

/// The latest error of each endpoint's rows and how many attempts they made.
async fn errors(c: &tokio_postgres::Client, endpoint: &str) -> (Vec<String>, i64) {
    let rows = c
        .query(
            "SELECT coalesce(o.last_error, ''), (SELECT count(*) FROM webhook.attempts a WHERE a.outbox_id = o.id)
               FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id)
              WHERE e.name = $1",
            &[&endpoint],
        )
        .await
        .unwrap();
    (
        rows.iter().map(|r| r.get(0)).collect(),
        rows.iter().map(|r| r.get::<_, i64>(1)).sum(),
    )
}

#[tokio::test]
async fn a_private_ca_and_a_client_certificate_reach_a_demanding_receiver() {
    let r = https_receiver("127.0.0.1").await;
    let db = TestDb::new().await;
    let c = db.client().await;
    let once = "max_attempts = 1\n";
    let relay = start(
        &db,
        config(
            "",
            &[
                ("full", &r.rx.url, &format!("{}{}", r.trust(), r.identity())),
                ("untrusted", &r.rx.url, &format!("{once}{}", r.identity())),
                ("anonymous", &r.rx.url, &format!("{once}{}", r.trust())),
            ],
        ),
    )
    .await;
    enqueue(&c, 2).await;
    wait_status(&c, "delivered", 2, "the full endpoint's rows", WAIT).await;
    wait_status(&c, "dead", 4, "the other endpoints' rows", WAIT).await;
    relay.shutdown().await;
    assert_eq!(
        r.rx.count(),
        2,
        "only the endpoint with both reached the receiver"
    );

    let (untrusted, attempts) = errors(&c, "untrusted").await;
    assert_eq!(attempts, 2, "each failure is an attempt");
    for e in &untrusted {
        assert!(
            e.starts_with("connection failed") && e.contains("UnknownIssuer"),
            "the receiver's private CA is not trusted without ca_file: {e}"
        );
    }
    let (anonymous, attempts) = errors(&c, "anonymous").await;
    assert_eq!(attempts, 2);
    for e in &anonymous {
        assert!(
            e.contains("CertificateRequired"),
            "without a client certificate the receiver ends the handshake: {e}"
        );
    }
    assert!(
        r.refused.load(Ordering::SeqCst) >= 2,
        "the receiver refused handshakes"
    );

    // Relay-wide [http] settings serve an endpoint that sets none.
    let db = TestDb::new().await;
    let c = db.client().await;
    let top = format!("[http]\n{}{}", r.trust(), r.identity());
    let relay = start(&db, config(&top, &[("wide", &r.rx.url, "")])).await;
    enqueue(&c, 1).await;
    wait_status(
        &c,
        "delivered",
        1,
        "delivered with [http]'s certificate",
        WAIT,
    )
    .await;
    relay.shutdown().await;
}

/// A CONNECT proxy on 127.0.0.1 that records each tunnel's target.
struct ConnectProxy {
    url: String,
    tunnels: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    async fn start(host: &str) -> ConnectProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{host}:{}", listener.local_addr().unwrap().port());
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let seen = tunnels.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    let mut line = String::new();
                    conn.read_line(&mut line).await.ok()?;
                    let target = line
                        .strip_prefix("CONNECT ")?
                        .split(' ')
                        .next()?
                        .to_string();
                    loop {
                        let mut header = String::new();
                        conn.read_line(&mut header).await.ok()?;
                        if header.trim().is_empty() {
                            break;
                        }
                    }
                    // Tests send traffic to loopback only.
                    if !target.starts_with("127.0.0.1:") && !target.starts_with("localhost:") {
                        conn.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                            .await
                            .ok()?;
                        return None;
                    }
                    let mut upstream = tokio::net::TcpStream::connect(&target).await.ok()?;
                    seen.lock().unwrap().push(target);
                    conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await
                        .ok()?;
                    tokio::io::copy_bidirectional(&mut conn, &mut upstream)
                        .await
                        .ok()?;
                    Some(())
                });
            }
        });
        ConnectProxy {
            url,
            tunnels,
            _task: task,
        }
    }

    fn tunnels_to(&self, url: &str) -> usize {
        let target = url::Url::parse(url).unwrap();
        let target = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap());
        self.tunnels
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t == target)
            .count()
    }
}

#[tokio::test]
async fn requests_go_through_the_configured_proxy_unless_an_endpoint_says_none() {
    let r = https_receiver("127.0.0.1").await;
    let direct = https_receiver("127.0.0.1").await;
    let proxy = ConnectProxy::start("127.0.0.1").await;
    let db = TestDb::new().await;
    let c = db.client().await;
    let top = format!("[http]\nproxy = \"{}\"\n", proxy.url);
    let tls = format!("{}{}", r.trust(), r.identity());
    let direct_tls = format!("{}{}proxy = \"none\"\n", direct.trust(), direct.identity());
    let relay = start(
        &db,
        config(
            &top,
            &[
                ("proxied", &r.rx.url, &tls),
                ("direct", &direct.rx.url, &direct_tls),
            ],
        ),
    )
    .await;
    enqueue(&c, 3).await;
    wait_status(&c, "delivered", 6, "every row delivered", WAIT).await;
    relay.shutdown().await;
    assert_eq!(r.rx.count(), 3);
    assert_eq!(direct.rx.count(), 3);
    let through = proxy.tunnels_to(&r.rx.url);
    assert!(
        (1..=3).contains(&through),
        "{through} tunnels to the proxied receiver"
    );
    assert_eq!(
        proxy.tunnels_to(&direct.rx.url),
        0,
        "proxy = \"none\" goes straight"
    );
}

#[tokio::test]
async fn the_environments_https_proxy_and_no_proxy_are_used_when_the_config_is_silent() {
    let r = https_receiver("localhost").await;
    let proxy = ConnectProxy::start("127.0.0.1").await;
    let tls = format!("{}{}", r.trust(), r.identity());
    let text = config_text("", &[("crm", &r.rx.url, &tls)]);
    for (no_proxy, expected) in [("", 1), ("localhost", 0)] {
        let db = TestDb::new().await;
        let c = db.client().await;
        let before = r.rx.count();
        let tunnels_before = proxy.tunnels_to(&r.rx.url);
        let mut relay = RelayProcess::spawn_with_env(
            &db.url,
            &text,
            &[("HTTPS_PROXY", &proxy.url), ("NO_PROXY", no_proxy)],
        );
        // Rows are written for the endpoints the relay has mirrored.
        crate::support::wait_for("the relay to mirror its endpoint", WAIT, || async {
            let n: i64 = c
                .query_one("SELECT count(*) FROM webhook.endpoints WHERE enabled", &[])
                .await
                .unwrap()
                .get(0);
            (n == 1).then_some(())
        })
        .await;
        enqueue(&c, 1).await;
        let delivered = crate::support::wait_for("delivered", WAIT, || async {
            let (errors, attempts) = errors(&c, "crm").await;
            match crate::delivery::count_status(&c, "delivered").await {
                1 => Some(Ok(())),
                _ if attempts > 0 => Some(Err(errors)),
                _ => None,
            }
        })
        .await;
        assert_eq!(delivered, Ok(()), "NO_PROXY={no_proxy:?}:\n{}", relay.log());
        relay.sigterm();
        assert!(relay.wait_exit(WAIT).success());
        assert_eq!(r.rx.count(), before + 1);
        assert_eq!(
            proxy.tunnels_to(&r.rx.url) - tunnels_before,
            expected,
            "NO_PROXY={no_proxy:?}:\n{}",
            relay.log()
        );
    }
}

#[tokio::test]
async fn with_a_proxy_the_ssrf_guard_checks_the_receiver_and_trusts_the_proxy() {
    // The receiver is on loopback, named by a host name the proxy would
    // resolve; the proxy is named by a host name too.
    let r = https_receiver("localhost").await;
    let proxy = ConnectProxy::start("localhost").await;
    let tls = format!("{}{}max_attempts = 1\n", r.trust(), r.identity());
    for (allow, delivered) in [("", false), ("allow = [\"127.0.0.0/8\", \"::1\"]", true)] {
        let db = TestDb::new().await;
        let c = db.client().await;
        let top = format!("[http]\nproxy = \"{}\"\n[ssrf_guard]\n{allow}\n", proxy.url);
        let relay = start(&db, config(&top, &[("crm", &r.rx.url, &tls)])).await;
        enqueue(&c, 1).await;
        let status = if delivered { "delivered" } else { "dead" };
        wait_status(&c, status, 1, status, WAIT).await;
        relay.shutdown().await;
        let (errors, _) = errors(&c, "crm").await;
        if delivered {
            assert_eq!(proxy.tunnels_to(&r.rx.url), 1);
        } else {
            assert!(
                errors[0].contains("refused by the SSRF guard") && errors[0].contains("localhost"),
                "{errors:?}"
            );
            assert_eq!(
                proxy.tunnels_to(&r.rx.url),
                0,
                "nothing was handed to the proxy"
            );
        }
    }
}
