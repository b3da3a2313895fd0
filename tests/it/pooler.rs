//! The relay through PgBouncer in transaction mode (Debian's pgbouncer,
//! started here in front of the test server): claims and write-backs with
//! `pooler = "transaction"`, LISTEN on `listen_database_url` or none at all.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::delivery::{config, config_text, enqueue, wait_status};
use crate::process::RelayProcess;
use crate::receiver::Receiver;
use crate::support::{cli, stderr, wait_for, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// A pgbouncer in transaction mode in front of the test server; stopped
/// (by its PID) when dropped.
struct PgBouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start(server: &url::Url) -> PgBouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is not installed: apt-get install pgbouncer (.ci/run does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let user = server.username();
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={} port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = 4\nmax_client_conn = 100\nlogfile = {}\n",
                server.host_str().unwrap(),
                server.port().unwrap_or(5432),
                dir.path().join("users.txt").display(),
                dir.path().join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let account = outbox_relay::throwaway::server_account().unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = account {
            // pgbouncer refuses to run as root.
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
            }
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().expect("starting pgbouncer");
        let bouncer = PgBouncer {
            child,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// `url` with pgbouncer's host and port.
    fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_relay_delivers_through_pgbouncer_in_transaction_mode() {
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start(&url::Url::parse(&db.url).unwrap());
    let pooled = bouncer.url(&db.url);
    let c = db.client().await;
    let rx = Receiver::ok().await;

    // With a direct LISTEN connection beside the pooled one.
    let top = format!(
        "pooler = \"transaction\"\nlisten_database_url = \"{}\"\n",
        db.url
    );
    let relay = outbox_relay::relay::start(config(&top, &[("crm", &rx.url, "")]), pooled.clone())
        .await
        .expect("the relay starts through pgbouncer");
    enqueue(&c, 20).await;
    wait_status(
        &c,
        "delivered",
        20,
        "20 rows delivered through pgbouncer",
        WAIT,
    )
    .await;
    assert!(relay.metrics.ready());
    relay.shutdown().await;
    assert_eq!(rx.unique_ids(), 20);

    // Without one, the real binary: the poll timer finds the rows, it says
    // so once, and no statement fails on the way (with the default
    // pooler = "none" the same run logs `prepared statement "s4" does not
    // exist` on claims and write-backs).
    let text = config_text("pooler = \"transaction\"\n", &[("crm", &rx.url, "")]);
    let mut relay = RelayProcess::spawn(&pooled, &text);
    wait_for("the relay to mirror its endpoint", WAIT, || async {
        relay.log().contains("relay starting").then_some(())
    })
    .await;
    enqueue(&c, 20).await;
    wait_status(
        &c,
        "delivered",
        40,
        "20 more rows delivered by polling",
        WAIT,
    )
    .await;
    relay.sigterm();
    assert!(relay.wait_exit(WAIT).success());
    let log = relay.log();
    // Warnings and errors, by their level field (the log is coloured).
    let alarms: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN\u{1b}") || l.contains("ERROR\u{1b}"))
        .collect();
    assert!(
        alarms.len() == 1 && alarms[0].contains("no LISTEN connection"),
        "one warning expected, about LISTEN:\n{}",
        alarms.join("\n")
    );
    assert!(!log.contains("does not exist"), "{log}");
    assert_eq!(rx.unique_ids(), 40);
    // The write-backs went through the pooler: one attempt recorded per row.
    let attempts: i64 = c
        .query_one("SELECT count(*) FROM webhook.attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 40);

    // A DBA's commands through the pooler too (the migrations go direct).
    for args in [
        &["status"][..],
        &[
            "replay",
            "--all-endpoints",
            "--status",
            "delivered",
            "--dry-run",
        ],
        &["pause", "--endpoint", "crm"],
        &["resume", "--endpoint", "crm"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--database-url", &pooled]);
        let out = cli(&args, &[]).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
}
