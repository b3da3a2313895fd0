//! TLS to Postgres: a throwaway cluster with `ssl = on` whose pg_hba.conf
//! accepts TLS only (and one user by client certificate), certificates made
//! here; every sslmode, the environment variables, the failures, and the
//! relay's commands and daemon over it.

use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use outbox_relay::db;
use outbox_relay::throwaway::{Cluster, ClusterOptions, ServerTls};

use crate::delivery::{config, config_text, enqueue, wait_status};
use crate::process::RelayProcess;
use crate::receiver::Receiver;
use crate::support::{wait_for, Pki, EXAMPLE_APP_SQL, TRIGGERS_SQL};

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");
const WAIT: Duration = Duration::from_secs(30);

/// TLS only: cleartext is rejected for everyone; `certuser` must present a
/// client certificate; everyone else in TLS is trusted.
const HBA: &str = "\
local     all all                 trust
hostssl   all certuser 127.0.0.1/32 cert
hostnossl all all all             reject
hostssl   all all      127.0.0.1/32 trust
";

struct TlsServer {
    port: u16,
    /// The CA that signed the server's and the client's certificates.
    ca: String,
    /// A CA that signed nothing here.
    other_ca: String,
    client_cert: String,
    client_key: String,
    _pki: Pki,
    _other: Pki,
    _cluster: Mutex<Cluster>,
}

static SERVER: OnceLock<TlsServer> = OnceLock::new();

fn server() -> &'static TlsServer {
    SERVER.get_or_init(|| {
        std::thread::spawn(|| {
            let pki = Pki::new("postgres");
            let other = Pki::new("stranger");
            let leaf = pki.server();
            let cluster = Cluster::start(ClusterOptions {
                tls: Some(ServerTls {
                    cert: leaf.cert_pem,
                    key: leaf.key_pem,
                    client_ca: Some(pki.ca_pem.clone()),
                }),
                hba_conf: Some(HBA.into()),
                ..ClusterOptions::default()
            })
            .expect("starting a throwaway Postgres with ssl = on");
            let client = pki.client("certuser");
            TlsServer {
                port: cluster.port(),
                ca: pki.write("ca.pem", &pki.ca_pem),
                other_ca: other.write("other-ca.pem", &other.ca_pem),
                client_cert: pki.write("client.crt", &client.cert_pem),
                client_key: pki.write("client.key", &client.key_pem),
                _pki: pki,
                _other: other,
                _cluster: Mutex::new(cluster),
            }
        })
        .join()
        .expect("setting up the TLS cluster")
    })
}

impl TlsServer {
    /// URL of database `db` on host `host` (the TCP connection always goes to
    /// 127.0.0.1), with extra query parameters.
    fn url(&self, user: &str, host: &str, db: &str, params: &str) -> String {
        let mut url = format!(
            "postgres://{user}@{host}:{}/{db}?connect_timeout=10&hostaddr=127.0.0.1",
            self.port
        );
        if !params.is_empty() {
            url.push('&');
            url.push_str(params);
        }
        url
    }

    fn full(&self, db: &str) -> String {
        self.url(
            "postgres",
            "localhost",
            db,
            &format!("sslmode=verify-full&sslrootcert={}", self.ca),
        )
    }

    /// A fresh database with the webhook schema, the reference app and triggers.
    async fn database(&self, name: &str) -> String {
        let admin = db::connect_simple(&self.full("postgres")).await.unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        let url = self.full(name);
        let mut c = db::connect_simple(&url).await.unwrap();
        outbox_relay::migrate::run_migrations(&mut c).await.unwrap();
        c.batch_execute(EXAMPLE_APP_SQL).await.unwrap();
        c.batch_execute(TRIGGERS_SQL).await.unwrap();
        url
    }
}

/// Connects and says whether the session is encrypted; or the error's line.
async fn session_ssl(url: &str) -> Result<bool, String> {
    let c = db::connect_simple(url)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn assert_refused(result: Result<bool, String>, cause: &str) {
    let err = result.expect_err("the connection should be refused");
    assert!(err.contains(cause), "expected {cause:?} in: {err}");
    assert!(!err.contains('\n'), "not one line: {err}");
}

#[tokio::test]
async fn every_sslmode_against_a_server_that_accepts_only_tls() {
    let s = server();
    let ip = |params: &str| s.url("postgres", "127.0.0.1", "postgres", params);
    let ca = format!("sslrootcert={}", s.ca);
    let other = format!("sslrootcert={}", s.other_ca);

    // disable: the server's pg_hba.conf rejects cleartext, and says so.
    assert_refused(
        session_ssl(&ip("sslmode=disable")).await,
        "no encryption (the server accepts only TLS connections from here; sslmode=disable",
    );
    // prefer (the default) and require: encrypted, nothing checked.
    assert_eq!(session_ssl(&ip("")).await, Ok(true));
    assert_eq!(session_ssl(&ip("sslmode=prefer")).await, Ok(true));
    assert_eq!(session_ssl(&ip("sslmode=require")).await, Ok(true));
    // require with a root checks the chain (libpq), so a stranger's root fails.
    assert_refused(
        session_ssl(&ip(&format!("sslmode=require&{other}"))).await,
        "the server's certificate is not signed by a trusted root (sslrootcert=",
    );
    // verify-ca: the chain, not the name.
    assert_eq!(
        session_ssl(&ip(&format!("sslmode=verify-ca&{ca}"))).await,
        Ok(true)
    );
    let wrong_name = |params: &str| s.url("postgres", "db.wrong.example", "postgres", params);
    assert_eq!(
        session_ssl(&wrong_name(&format!("sslmode=verify-ca&{ca}"))).await,
        Ok(true)
    );
    assert_refused(
        session_ssl(&ip(&format!("sslmode=verify-ca&{other}"))).await,
        "not signed by a trusted root",
    );
    // verify-full: the chain and the name (a DNS name or an IP address).
    assert_eq!(
        session_ssl(&ip(&format!("sslmode=verify-full&{ca}"))).await,
        Ok(true)
    );
    assert_eq!(session_ssl(&s.full("postgres")).await, Ok(true));
    assert_refused(
        session_ssl(&wrong_name(&format!("sslmode=verify-full&{ca}"))).await,
        "not valid for the host name db.wrong.example (it names localhost, 127.0.0.1)",
    );
    assert_refused(
        session_ssl(&ip(&format!("sslmode=verify-full&{other}"))).await,
        "not signed by a trusted root",
    );
    assert_refused(
        session_ssl(&ip("sslmode=verify-full")).await,
        "needs the root certificate",
    );

    // Client certificate authentication (pg_hba `cert`).
    let admin = db::connect_simple(&s.full("postgres")).await.unwrap();
    admin
        .batch_execute("DO $$ BEGIN CREATE ROLE certuser LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        .await
        .unwrap();
    let cert_url = |params: &str| {
        s.url(
            "certuser",
            "localhost",
            "postgres",
            &format!("sslmode=verify-full&{ca}{params}"),
        )
    };
    let c = db::connect_simple(&cert_url(&format!(
        "&sslcert={}&sslkey={}",
        s.client_cert, s.client_key
    )))
    .await
    .unwrap();
    let user: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "certuser");
    assert_refused(
        session_ssl(&cert_url("")).await,
        "client certificate (set sslcert and sslkey to present one)",
    );
}

#[tokio::test]
async fn against_a_server_without_tls_prefer_falls_back_and_require_refuses() {
    let plain = crate::support::TestDb::new().await;
    let sep = if plain.url.contains('?') { '&' } else { '?' };
    assert_eq!(session_ssl(&plain.url).await, Ok(false));
    assert_eq!(
        session_ssl(&format!("{}{sep}sslmode=prefer", plain.url)).await,
        Ok(false)
    );
    assert_refused(
        session_ssl(&format!("{}{sep}sslmode=require", plain.url)).await,
        "the server does not offer TLS, and sslmode=require requires it",
    );
}

fn command(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn migrate_status_and_replay_connect_in_tls_and_name_the_cause_of_a_failure() {
    let s = server();
    let url = s.database("tls_commands").await;
    let run = |cmd: &[&str], url: &str, env: &[(&str, &str)]| {
        let mut args = cmd.to_vec();
        args.extend(["--database-url", url]);
        command(&args, env)
    };
    for cmd in [
        &["migrate"][..],
        &["status"],
        &["replay", "--all-endpoints", "--dry-run"],
    ] {
        let (code, text) = run(cmd, &url, &[]);
        assert_eq!(code, 0, "{cmd:?} over verify-full: {text}");
    }
    // PGSSLMODE and PGSSLROOTCERT where the URL is silent.
    let bare = s.url("postgres", "localhost", "tls_commands", "");
    let (code, text) = run(
        &["status"],
        &bare,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &s.ca)],
    );
    assert_eq!(code, 0, "{text}");
    // A root that did not sign the server: exit 1, one line naming the cause.
    for (cmd, url, env) in [
        (
            &["migrate"][..],
            bare.clone(),
            vec![
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", s.other_ca.as_str()),
            ],
        ),
        (
            &["status"],
            format!("{bare}&sslmode=verify-ca&sslrootcert={}", s.other_ca),
            vec![],
        ),
        (
            &["replay", "--id", "1"],
            format!("{bare}&sslmode=disable"),
            vec![],
        ),
    ] {
        let (code, text) = run(cmd, &url, &env);
        assert_eq!(code, 1, "{cmd:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{cmd:?}: {text}");
        assert!(
            text.contains("not signed by a trusted root") || text.contains("no encryption"),
            "{cmd:?}: {text}"
        );
    }
    // A mode libpq does not know is a usage error, for run too.
    let (code, text) = run(&["status"], &format!("{bare}&sslmode=verify"), &[]);
    assert!(code == 2 && text.contains("sslmode=\"verify\""), "{text}");
    let (code, text) = run(&["migrate"], &bare, &[("PGSSLMODE", "on")]);
    assert!(code == 2 && text.contains("sslmode=\"on\""), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    let endpoints = config_text("", &[("crm", "http://127.0.0.1:9/", "")]);
    std::fs::write(
        &file,
        format!("listen_database_url = \"{bare}&sslmode=verify\"\n{endpoints}"),
    )
    .unwrap();
    let config = file.display().to_string();
    let (code, text) = run(&["run", "--config", &config], &url, &[]);
    assert!(
        code == 2 && text.contains("listen_database_url: database URL: sslmode=\"verify\""),
        "{text}"
    );
}

#[tokio::test]
async fn the_relay_delivers_with_every_connection_in_tls() {
    let s = server();
    let url = s.database("tls_relay").await;
    let rx = Receiver::ok().await;
    let relay = outbox_relay::relay::start(config("", &[("crm", &rx.url, "")]), url.clone())
        .await
        .expect("the relay starts over verify-full");
    let c = db::connect_simple(&url).await.unwrap();
    enqueue(&c, 3).await;
    wait_status(&c, "delivered", 3, "3 rows delivered over TLS", WAIT).await;
    // Every connection of the relay to this database (claims, outcomes,
    // housekeeping, LISTEN, ...) is encrypted.
    let (plain, total): (i64, i64) = wait_for("the relay's connections", WAIT, || async {
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*)
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                    AND a.backend_type = 'client backend'",
                &[],
            )
            .await
            .unwrap();
        let (plain, total): (i64, i64) = (row.get(0), row.get(1));
        (total >= 4).then_some((plain, total))
    })
    .await;
    assert_eq!(
        plain, 0,
        "{plain} of {total} relay connections in cleartext"
    );
    assert!(
        relay.metrics.ready(),
        "LISTEN and the database are up over TLS"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn run_keeps_retrying_and_reports_not_ready_while_tls_fails() {
    let s = server();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = config_text("", &[("crm", "http://127.0.0.1:9/", "")])
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let bad = s.url(
        "postgres",
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", s.other_ca),
    );
    let relay = RelayProcess::spawn(&bad, &text);
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    wait_for("/readyz to answer 503", WAIT, || async {
        let r = http.get(&readyz).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    // Retried with backoff, each time naming the cause.
    wait_for("two attempts in the log", WAIT, || async {
        let log = relay.log();
        (log.matches("not signed by a trusted root").count() >= 2).then_some(())
    })
    .await;
    assert!(!relay.log().contains("panicked"));
    relay.sigterm();
    let mut relay = relay;
    assert!(relay.wait_exit(WAIT).success());
}
