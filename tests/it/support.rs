//! Test harness: one Postgres server per test binary (a throwaway cluster, or
//! the server at TEST_DATABASE_URL), a migrated template database with the
//! reference schema and triggers, and a fresh database per test cloned from it.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use outbox_relay::throwaway::{Cluster, ClusterOptions};
use tokio_postgres::{Client, NoTls};

pub const EXAMPLE_APP_SQL: &str = include_str!("../../sql/example_app.sql");
pub const TRIGGERS_SQL: &str = include_str!("../../sql/triggers.sql");

struct Server {
    /// URL of the server with the database name left for `url_for`.
    base: url::Url,
    template: String,
    prefix: String,
    // Kept alive for the whole test binary; the cluster's reaper removes it
    // when the process exits, also when tests fail.
    _cluster: Option<Mutex<Cluster>>,
}

// A failed set-up is remembered, so that every test reports it at once
// instead of each trying (and waiting) again.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn server() -> &'static Server {
    let server = SERVER.get_or_init(|| {
        // Set-up runs on its own thread and runtime, since callers may be
        // inside a test's runtime already.
        std::thread::spawn(start_server).join().map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    });
    match server {
        Ok(server) => server,
        Err(why) => panic!("the test Postgres could not be set up: {why}"),
    }
}

fn start_server() -> Server {
    let (base, cluster) = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => (
            url::Url::parse(&url).expect("TEST_DATABASE_URL is a URL"),
            None,
        ),
        _ => {
            let cluster =
                Cluster::start(ClusterOptions::default()).expect("starting a throwaway Postgres");
            let url = url::Url::parse(&cluster.url("postgres")).expect("cluster URL");
            (url, Some(Mutex::new(cluster)))
        }
    };
    let prefix = format!("outbox_test_{}", std::process::id());
    let template = format!("{prefix}_template");
    let server = Server {
        base,
        template,
        prefix,
        _cluster: cluster,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = connect(&server.url_for(server.base.path().trim_start_matches('/'))).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", server.template))
            .await
            .expect("dropping a stale template database");
        admin
            .batch_execute(&format!("CREATE DATABASE {}", server.template))
            .await
            .expect("creating the template database");
        let mut tpl = connect(&server.url_for(&server.template)).await;
        outbox_relay::migrate::run_migrations(&mut tpl)
            .await
            .expect("migrating the template");
        tpl.batch_execute(EXAMPLE_APP_SQL)
            .await
            .expect("sql/example_app.sql");
        tpl.batch_execute(TRIGGERS_SQL)
            .await
            .expect("sql/triggers.sql");
    });
    server
}

impl Server {
    fn url_for(&self, db: &str) -> String {
        let mut url = self.base.clone();
        url.set_path(&format!("/{db}"));
        url.to_string()
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connecting to the test server");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own for one test, cloned from the migrated template with
/// the reference schema and triggers installed. Dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// A database cloned from the migrated template.
    pub async fn new() -> TestDb {
        TestDb::create(true).await
    }

    /// An empty database (no `webhook` schema, no reference schema), for a
    /// test that builds an older schema itself.
    pub async fn empty() -> TestDb {
        TestDb::create(false).await
    }

    async fn create(from_template: bool) -> TestDb {
        // Relay logs appear in a failing test's output; RUST_LOG picks the level.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let server = server();
        let name = format!(
            "{}_{}",
            server.prefix,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let admin_url = server.url_for(server.base.path().trim_start_matches('/'));
        let admin = connect(&admin_url).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The template may still show the set-up connection for a moment.
            match admin
                .batch_execute(&if from_template {
                    format!("CREATE DATABASE {name} TEMPLATE {}", server.template)
                } else {
                    format!("CREATE DATABASE {name}")
                })
                .await
            {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("being accessed") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("creating test database {name}: {e}"),
            }
        }
        TestDb {
            url: server.url_for(&name),
            name,
            admin_url,
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; do the async work elsewhere.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin_url, NoTls).await.ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}
/// The one bigint `sql` returns.
/// Runs `text` (one or more statements), failing the test on an error.
pub async fn sql(c: &Client, text: &str) {
    c.batch_execute(text)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"));
}

pub async fn one_i64(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// The first column of every row of `sql`, in its order.
pub async fn first_column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    c: &Client,
    sql: &str,
) -> Vec<T> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The rows of `sql`, each as Postgres prints a row value (`(a,1,t)`, strings
/// with spaces in quotes, NULL as nothing), in the order of `sql`.
pub async fn rows(c: &Client, sql: &str) -> Vec<String> {
    c.query(&format!("SELECT r::text FROM ({sql}) r"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The queue's state as a relay leaves it (V9, V10), set by hand for tests of
/// the DBA's functions and views: rows `ids` dead, each with its
/// webhook.dead_rows row.
pub async fn set_dead(c: &Client, ids: &[i64]) {
    c.execute(
        "WITH d AS (UPDATE webhook.outbox SET status = 'dead' WHERE id = ANY ($1) RETURNING id, endpoint_id)
         INSERT INTO webhook.dead_rows (outbox_id, endpoint_id) SELECT id, endpoint_id FROM d
         ON CONFLICT DO NOTHING",
        &[&ids],
    )
    .await
    .unwrap();
}

/// Row `id` failed `attempts` times (last error 'HTTP 503') and holds its key
/// until its retry in `retry_in` (an interval, e.g. '10 minutes').
pub async fn hold(c: &Client, id: i64, attempts: i32, retry_in: &str) {
    c.batch_execute(&format!(
        "UPDATE webhook.outbox SET attempts = {attempts}, last_error = 'HTTP 503',
                next_attempt_at = now() + interval '{retry_in}' WHERE id = {id};
         INSERT INTO webhook.holds (endpoint_id, ordering_key, outbox_id, next_attempt_at)
         SELECT endpoint_id, ordering_key, id, next_attempt_at FROM webhook.outbox WHERE id = {id};"
    ))
    .await
    .unwrap();
}

/// Row `id` waits parked behind its key's held head.
pub async fn park(c: &Client, id: i64) {
    c.execute(
        "INSERT INTO webhook.parked (endpoint_id, ordering_key, outbox_id)
         SELECT endpoint_id, ordering_key, id FROM webhook.outbox WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
}

/// Row `id` failed `attempts` times and waits outside any key's order for
/// its retry in `retry_in` (webhook.redeliveries).
pub async fn redeliver(c: &Client, id: i64, attempts: i32, retry_in: &str) {
    c.batch_execute(&format!(
        "UPDATE webhook.outbox SET attempts = {attempts}, next_attempt_at = now() + interval '{retry_in}'
          WHERE id = {id};
         INSERT INTO webhook.redeliveries (outbox_id, endpoint_id, next_attempt_at)
         SELECT id, endpoint_id, next_attempt_at FROM webhook.outbox WHERE id = {id};"
    ))
    .await
    .unwrap();
}

/// Waits until `check` returns Some, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The relay's binary, as cargo built it for the tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// Runs the binary to completion in a scratch directory (no relay.toml
/// there), without DATABASE_URL unless `env` sets it.
pub async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        Command::new(BIN)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .envs(env)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Certificates made for a test: a CA, and leaf certificates it signs.
pub struct Pki {
    pub ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    /// Where [`Pki::write`] puts files; removed with the value.
    pub dir: tempfile::TempDir,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        self.leaf("localhost", &["localhost", "127.0.0.1"], false)
    }

    /// A client certificate whose common name is `cn` (Postgres `cert` auth
    /// takes the user name from it).
    pub fn client(&self, cn: &str) -> Leaf {
        self.leaf(cn, &[], true)
    }

    fn leaf(&self, cn: &str, names: &[&str], client: bool) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `text` to `name` in this PKI's directory (mode 0600) and returns the path.
    pub fn write(&self, name: &str, text: &str) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    }
}

impl Pki {
    /// A server set-up with `leaf` that demands a client certificate signed
    /// by this CA.
    pub fn server_demanding_client_certs(
        &self,
        leaf: &Leaf,
    ) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        std::sync::Arc::new(config)
    }
}

/// Where `.ci/install` puts Debian's chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `args` (e.g. `--dump-dom`), killed
/// after `timeout`; fails the test plainly if Chromium is not installed.
pub async fn chromium(url: &str, args: &[String], timeout: Duration) -> Output {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the status page is tested in a real browser; \
         install it with `apt-get install chromium` (bash .ci/test does)"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let _profile = profile;
        let mut child = cmd.spawn().expect("starting chromium");
        // Read the pipes on their own threads, so a chatty browser cannot
        // block on a full pipe while it is being waited for.
        let mut out_pipe = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut out_pipe, &mut buf).map(|_| buf)
        });
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut err_pipe, &mut buf).map(|_| buf)
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                // Only this child, by its PID.
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output {
            status,
            stdout: out.join().unwrap().unwrap_or_default(),
            stderr: err.join().unwrap().unwrap_or_default(),
        }
    })
    .await
    .unwrap()
}

/// The single number a query returns (a count).
pub async fn count(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    c.query_one(sql, params).await.expect(sql).get(0)
}

/// Creates buyers `{prefix}{i:04}` for i in 0..n, each with a credits row at
/// 0 (which writes no event), lead cost 1.
pub async fn add_buyers(c: &Client, prefix: &str, n: i32) {
    c.execute(
        "WITH b AS (
            INSERT INTO buyers (buyer_id, business_name, lead_cost)
            SELECT $1 || lpad(g::text, 4, '0'), 'Buyer ' || g, 1 FROM generate_series(0, $2 - 1) g
            RETURNING buyer_id)
         INSERT INTO buyer_credits (buyer_id, balance) SELECT buyer_id, 0 FROM b",
        &[&prefix, &n],
    )
    .await
    .expect("adding buyers");
}

/// The name [`add_buyers`] gave buyer `i`.
pub fn buyer(prefix: &str, i: i32) -> String {
    format!("{prefix}{i:04}")
}

/// One top-up of `amount` credits, in a transaction of its own: the reference
/// trigger writes one add_credits event whose topUpAmount is `amount`.
pub async fn top_up(c: &Client, buyer: &str, amount: i64) {
    c.execute(
        "UPDATE buyer_credits SET balance = balance + $2::bigint WHERE buyer_id = $1",
        &[&buyer, &amount],
    )
    .await
    .expect("a top-up");
}

/// An add_credits body's key and sequence number: the buyer and the amount
/// (the tests top buyers up by 1, 2, 3, ... in that order).
pub fn buyer_and_amount(body: &serde_json::Value) -> (String, i64) {
    (
        body["buyerId"].as_str().unwrap_or_default().to_string(),
        body["topUpAmount"].as_i64().unwrap_or(-1),
    )
}

/// One request as a [`LogReceiver`] saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub key: String,
    pub seq: i64,
    /// The webhook-id.
    pub id: String,
    /// 1 for the first request with this webhook-id, 2 for the second, ...
    pub nth: usize,
    /// The status answered (0 while the answer is being chosen).
    pub status: u16,
    /// When it arrived, by the machine's clock (writers record commits by it).
    pub at: SystemTime,
    /// The `x-relay` header (tests with several relays set one per relay), or "".
    pub relay: String,
    /// The Standard Webhooks signature checks out with the tests' secret.
    pub signed: bool,
}

/// A receiver that verifies and logs every request in arrival order, with
/// the event's key and sequence number taken from its body.
pub struct LogReceiver {
    pub url: String,
    log: Arc<Mutex<ReceiverLog>>,
    _rx: crate::receiver::Receiver,
}

#[derive(Default)]
struct ReceiverLog {
    requests: Vec<Logged>,
    /// Distinct (key, sequence number) pairs.
    events: std::collections::HashSet<(String, i64)>,
}

impl LogReceiver {
    /// `fields` takes the key and sequence number out of a body; `answer`
    /// chooses the reply from what was logged of the request.
    pub async fn start(
        fields: impl Fn(&serde_json::Value) -> (String, i64) + Send + Sync + 'static,
        answer: impl Fn(&Logged) -> crate::receiver::Reply + Send + Sync + 'static,
    ) -> LogReceiver {
        use crate::receiver::{signature_is_valid, Receiver, Reply};
        let log = Arc::new(Mutex::new(ReceiverLog::default()));
        let into = log.clone();
        let rx = Receiver::start(move |r| {
            let at = SystemTime::now();
            let body: serde_json::Value =
                serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
            let (key, seq) = fields(&body);
            let mut logged = Logged {
                key,
                seq,
                id: r.id.clone(),
                nth: r.nth,
                status: 0,
                at,
                relay: r
                    .headers
                    .get("x-relay")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                signed: signature_is_valid(crate::delivery::SECRET, r),
            };
            let reply = answer(&logged);
            logged.status = match &reply {
                Reply::Status(s) | Reply::WithHeaders(s, _) | Reply::After(_, s) => *s,
            };
            let mut log = into.lock().unwrap();
            log.events.insert((logged.key.clone(), logged.seq));
            log.requests.push(logged);
            reply
        })
        .await;
        LogReceiver {
            url: rx.url.clone(),
            log,
            _rx: rx,
        }
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Distinct (key, sequence number) pairs received so far.
    pub fn events(&self) -> usize {
        self.log.lock().unwrap().events.len()
    }

    /// Waits until `n` distinct events have arrived.
    pub async fn wait_events(&self, n: usize, what: &str, timeout: Duration) {
        wait_for(what, timeout, || async {
            (self.events() >= n).then_some(())
        })
        .await
    }
}

/// Keys whose events, each counted at its first receipt, did not arrive in
/// increasing sequence.
pub fn out_of_order_by_first_receipt(log: &[Logged]) -> Vec<String> {
    let firsts: Vec<&Logged> = log.iter().filter(|l| l.nth == 1).collect();
    keys_not_rising(firsts.into_iter(), true)
}

/// Keys with a request for an earlier event after one for a later event (a
/// retry or a re-send that came after the key had moved on): per key, the
/// sequence numbers of all requests in arrival order must never go down.
pub fn going_backwards(log: &[Logged]) -> Vec<String> {
    keys_not_rising(log.iter(), false)
}

fn keys_not_rising<'a>(log: impl Iterator<Item = &'a Logged>, strict: bool) -> Vec<String> {
    let mut last: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut bad = std::collections::BTreeSet::new();
    for l in log {
        if let Some(prev) = last.insert(&l.key, l.seq) {
            if l.seq < prev || (strict && l.seq == prev) {
                bad.insert(l.key.clone());
            }
        }
    }
    bad.into_iter().collect()
}

/// The p-th percentile (0..=100) of `values`, nearest rank; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
pub fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// A throwaway cluster of the test's own, for settings the shared server does
/// not have (`-c name=value`), with the relay's schema, the reference
/// application and its triggers in database `postgres`; and its URL. The
/// cluster goes when the value is dropped.
pub async fn own_cluster(settings: &[(&str, &str)]) -> (Cluster, String) {
    let options = ClusterOptions {
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(options))
        .await
        .unwrap()
        .expect("a throwaway cluster of the test's own");
    let url = cluster.url("postgres");
    let mut c = connect(&url).await;
    outbox_relay::migrate::run_migrations(&mut c)
        .await
        .expect("migrating");
    c.batch_execute(EXAMPLE_APP_SQL)
        .await
        .expect("sql/example_app.sql");
    c.batch_execute(TRIGGERS_SQL)
        .await
        .expect("sql/triggers.sql");
    (cluster, url)
}
