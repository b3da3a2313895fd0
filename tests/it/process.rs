//! The relay as a real process: SIGTERM, kill -9 mid-flight, secrets kept out
//! of logs; and a database that goes away under a running relay.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use outbox_relay::throwaway::{Cluster, ClusterOptions};

use crate::delivery::{config, config_text, count_status, enqueue, start, wait_status, SECRET};
use crate::receiver::{Receiver, Reply};
use crate::support::{connect, wait_for, TestDb, EXAMPLE_APP_SQL, TRIGGERS_SQL};

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");
const WAIT: Duration = Duration::from_secs(30);

/// `outbox-relay run` in a child process, logging at debug level to a file.
pub struct RelayProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    pub fn spawn(database_url: &str, config: &str) -> RelayProcess {
        RelayProcess::spawn_with_env(database_url, config, &[])
    }

    pub fn spawn_with_env(database_url: &str, config: &str, env: &[(&str, &str)]) -> RelayProcess {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("relay.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("relay.log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        RelayProcess {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's peak resident memory (VmHWM), in kB.
    pub fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- relay process log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a relay process has mirrored its endpoints: before that, the
/// triggers have no endpoint to route events to.
pub async fn wait_synced(c: &tokio_postgres::Client) {
    wait_for("the relay to sync its endpoints", WAIT, || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM webhook.endpoints WHERE enabled", &[])
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_secrets_stay_out_of_logs_and_database() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::failing_first(1, 500).await;
    // Every way a secret can be configured: secret, previous_secrets, secret_env.
    let rotated = "whsec_cm90YXRlZC1vdXQtc2VjcmV0LWJ5dGVzLTAwMDE=";
    let from_env = "whsec_ZnJvbS10aGUtZW52aXJvbm1lbnQtc2VjcmV0LTAwMDI=";
    let text = config_text(
        "",
        &[("crm", &rx.url, &format!("retry_initial = \"50ms\"\nprevious_secrets = [\"{rotated}\"]"))],
    ) + &format!(
        "[[endpoint]]\nname = \"env\"\nurl = \"{}\"\nevents = [\"add_credits\"]\nsecret_env = \"OUTBOX_TEST_SECRET\"\nretry_initial = \"50ms\"\n",
        rx.url
    );
    let mut relay =
        RelayProcess::spawn_with_env(&db.url, &text, &[("OUTBOX_TEST_SECRET", from_env)]);
    wait_synced(&c).await;
    c.batch_execute(
        "INSERT INTO buyers VALUES ('s1', 'Secretive Ltd', 1);
         INSERT INTO buyer_credits VALUES ('s1', 10);
         UPDATE buyer_credits SET balance = 0 WHERE buyer_id = 's1';",
    )
    .await
    .unwrap();
    wait_status(&c, "delivered", 3, "delivered", WAIT).await;
    relay.sigterm();
    let status = tokio::task::block_in_place(|| relay.wait_exit(WAIT));
    assert_eq!(status.code(), Some(0), "{}", relay.log());

    let log = relay.log();
    assert!(
        log.contains("attempt failed; will retry"),
        "the failure path was logged:\n{log}"
    );
    let dump: String = c
        .query_one(
            "SELECT concat_ws(' ',
                (SELECT string_agg(e::text, ' ') FROM webhook.endpoints e),
                (SELECT string_agg(o::text, ' ') FROM webhook.outbox o),
                (SELECT string_agg(a::text, ' ') FROM webhook.attempts a))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut forms = 0;
    for secret in [SECRET, rotated, from_env] {
        let encoded = secret.strip_prefix("whsec_").unwrap();
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let raw = String::from_utf8_lossy(&key).to_string();
        for needle in [secret, encoded, &hex, &hex.to_uppercase(), &raw] {
            assert!(
                !log.contains(needle),
                "a form of a secret appears in the log"
            );
            assert!(
                !dump.contains(needle),
                "a form of a secret appears in the database"
            );
            forms += 1;
        }
    }
    println!(
        "FIGURES secrets: secrets=3 forms_checked={forms} log_bytes={} found=0",
        log.len()
    );
}

#[tokio::test]
async fn a_killed_relay_has_its_events_resent_after_the_lease_with_the_same_id() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // First delivery of every event hangs; the relay is killed meanwhile.
    let rx = Receiver::start(|r| {
        if r.nth == 1 {
            Reply::After(Duration::from_secs(20), 200)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let text = config_text("lease = \"7s\"", &[("crm", &rx.url, "timeout = \"2s\"")]);
    let mut first = RelayProcess::spawn(&db.url, &text);
    wait_synced(&c).await;
    enqueue(&c, 5).await;
    rx.wait_count(5, "5 requests in flight", WAIT).await;
    first.kill9();
    // Its partitions stay its own until their lease ends; its events stay
    // pending, unattempted as far as the database knows.
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook.partitions WHERE owner IS NOT NULL AND lease_expires_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        held, 16,
        "the killed relay's partitions stay owned until the lease ends"
    );
    assert_eq!(count_status(&c, "pending").await, 5);

    let second = start(
        &db,
        config("lease = \"7s\"", &[("crm", &rx.url, "timeout = \"2s\"")]),
    )
    .await;
    wait_status(&c, "delivered", 5, "all re-sent and delivered", WAIT).await;
    second.shutdown().await;
    let reqs = rx.requests();
    assert_eq!(rx.unique_ids(), 5);
    assert_eq!(reqs.len(), 10, "each event sent once by each relay");
    for r in reqs.iter().filter(|r| r.nth == 2) {
        assert!(
            reqs.iter().any(|first| first.nth == 1 && first.id == r.id),
            "re-sent with the same webhook-id"
        );
    }
    let rows = c.query("SELECT attempts, (SELECT count(*) FROM webhook.attempts a WHERE a.outbox_id = o.id) FROM webhook.outbox o", &[]).await.unwrap();
    for r in rows {
        // The killed relay's attempts left no trace (docs/delivery.md): the
        // re-send is the row's first recorded attempt.
        assert_eq!(r.get::<_, i32>(0), 1, "the re-send is counted once");
        assert_eq!(
            r.get::<_, i64>(1),
            1,
            "only the attempt with a known outcome is recorded"
        );
    }
}

#[tokio::test]
async fn the_relay_survives_a_database_restart_mid_drain() {
    // A cluster of its own: stopping the shared one would break other tests.
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()))
        .await
        .unwrap()
        .expect("a throwaway cluster");
    let url = cluster.url("postgres");
    let cluster = Arc::new(Mutex::new(cluster));
    {
        let mut c = connect(&url).await;
        outbox_relay::migrate::run_migrations(&mut c).await.unwrap();
        c.batch_execute(EXAMPLE_APP_SQL).await.unwrap();
        c.batch_execute(TRIGGERS_SQL).await.unwrap();
    }
    let rx = Receiver::start(|_| Reply::After(Duration::from_millis(5), 200)).await;
    let relay = outbox_relay::relay::start(
        config("", &[("crm", &rx.url, "max_in_flight = 4")]),
        url.clone(),
    )
    .await
    .unwrap();
    let health = format!("http://{}/readyz", relay.http_addr);
    let http = reqwest::Client::new();
    let ready = |want: u16| {
        let (http, health) = (http.clone(), health.clone());
        async move { (http.get(&health).send().await.unwrap().status() == want).then_some(()) }
    };
    wait_for("ready", WAIT, || ready(200)).await;

    let c = connect(&url).await;
    enqueue(&c, 1000).await;
    rx.wait_count(100, "the drain under way", WAIT).await;
    drop(c);
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.lock().unwrap().stop_server().unwrap())
        .await
        .unwrap();
    wait_for("not ready while the database is down", WAIT, || ready(503)).await;
    // The outage itself: Postgres stays down this long while the relay runs.
    let outage = if std::env::var("OUTBOX_RELIABILITY_LONG").is_ok_and(|v| v == "1") {
        20
    } else {
        3
    };
    tokio::time::sleep(Duration::from_secs(outage)).await;
    wait_for("still not ready", WAIT, || ready(503)).await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.lock().unwrap().start_server().unwrap())
        .await
        .unwrap();
    wait_for("ready again", WAIT, || ready(200)).await;

    let c = connect(&url).await;
    enqueue(&c, 10).await;
    wait_status(
        &c,
        "delivered",
        1010,
        "everything delivered",
        Duration::from_secs(60),
    )
    .await;
    relay.shutdown().await;
    println!(
        "FIGURES database_restart: sent=1010 delivered_rows=1010 received_unique={} lost={} duplicates={} outage_s={outage}",
        rx.unique_ids(),
        1010 - rx.unique_ids() as i64,
        rx.count() - rx.unique_ids()
    );
    assert_eq!(rx.unique_ids(), 1010, "nothing lost");
}
