//! Database connections: connect (TLS as the URL's `sslmode` says, see
//! [`crate::pgtls`]) with a redacted one-line error, and the connection
//! driver task that tokio-postgres needs.

use anyhow::{anyhow, Context, Result};
use tokio_postgres::{Client, Socket};

use crate::pgtls::{self, connector::MakeRustls, SslMode};

/// A connection as tokio-postgres hands it over, before its driver runs.
pub type Connection = tokio_postgres::Connection<Socket, pgtls::connector::RustlsStream>;

/// Checks the URL's TLS parameters (and those of `PGSSLMODE`, ...) without
/// connecting; the error is one line naming the parameter.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    pgtls::split(url, &|name| std::env::var(name).ok(), home, &|p| {
        p.is_file()
    })
    .map(|_| ())
    .map_err(|e| format!("database URL: {e}"))
}

/// Connects, in TLS or not as the URL (or `PGSSLMODE`...) says. The error is
/// one line: the URL without its password, then the cause.
pub async fn open(url: &str) -> Result<(Client, Connection)> {
    let shown = redact_database_url(url);
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let (rest, params) = pgtls::split(url, &|name| std::env::var(name).ok(), home, &|p| {
        p.is_file()
    })
    .map_err(|e| anyhow!(e))
    .with_context(|| format!("connecting to {shown}"))?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| anyhow!(e.to_string()))
        .with_context(|| format!("connecting to {shown}: the connection string"))?;
    use tokio_postgres::config::{Host, SslMode as PgMode};
    config.ssl_mode(match params.mode {
        SslMode::Disable => PgMode::Disable,
        SslMode::Prefer => PgMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgMode::Require,
    });
    // As libpq: no TLS over Unix-domain sockets, whatever sslmode says.
    #[cfg(unix)]
    if config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)))
    {
        config.ssl_mode(PgMode::Disable);
    }
    let tls = MakeRustls::new(&params)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("connecting to {shown}"))?;
    config
        .connect(tls)
        .await
        .map_err(|e| anyhow!(pgtls::connector::describe(&e, &params)))
        .with_context(|| format!("connecting to {shown}"))
}

/// Connects and spawns the connection's driver task. The returned handle
/// finishes when the connection closes, which is how long-lived users (the
/// listener) notice a lost database.
pub async fn connect(url: &str) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = open(url).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok((client, driver))
}

/// Connects for a short task (migrate, status): the driver runs detached.
pub async fn connect_simple(url: &str) -> Result<Client> {
    Ok(connect(url).await?.0)
}

/// A database URL fit for messages: the password, if any, replaced.
pub fn redact_database_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => crate::config::redact_url(&parsed),
        // key=value connection strings: drop any password=... pair.
        Err(_) => url
            .split_whitespace()
            .map(|kv| {
                if kv.to_ascii_lowercase().starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Run first on every connection of the relay's engine (see `Db::conn`).
/// `jit = off`: with sequential scans disabled, a plan that has no other
/// path (the count of `webhook.relays` in the heartbeat) is costed above
/// `jit_above_cost`, and compiling it took 150-500 ms of the database's CPU
/// on every heartbeat; none of the relay's statements runs long enough for
/// JIT to pay.
pub const SESSION_SETUP: &str =
    "SET synchronous_commit = off; SET enable_seqscan = off; SET jit = off; \
     SET application_name = 'outbox-relay'";

/// Run after [`SESSION_SETUP`] on the connections that read the log and
/// write outcomes back: their statements are bitmap scans of
/// `outbox_endpoint_xid` and TID scans, and a plan made while the outbox was
/// empty would otherwise walk the whole primary key in id order (measured:
/// tests/it/schema.rs, 1,052 buffers to read 32 new rows of 30,032).
/// Their statements are written so that the generic plan is the right one
/// (sql/queue/read.sql), and they keep it: left to choose, Postgres planned
/// the read again at every execution (the generic plan's estimate of the
/// in-progress list is a hundred probes), 0.65 ms of planning for a read of
/// a few rows.
pub const QUEUE_SESSION_SETUP: &str =
    "SET enable_indexscan = off; SET plan_cache_mode = force_generic_plan";

mod statements;
pub use statements::{Conn, Statements, Stmt, OTHER_SQL};

/// One long-lived connection that reconnects on demand: callers ask for the
/// current connection, and report failures so the next call reconnects.
pub struct Db {
    url: String,
    /// Behind a pooler in transaction mode: no named statements, no session
    /// settings.
    pooled: bool,
    /// Reads the log or writes outcomes back ([`QUEUE_SESSION_SETUP`]).
    queue: bool,
    current: tokio::sync::Mutex<Option<std::sync::Arc<Conn>>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Db {
    pub fn new(url: String, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Db {
        Db {
            url,
            pooled: false,
            queue: false,
            current: tokio::sync::Mutex::new(None),
            metrics,
        }
    }

    /// For a pooler in transaction mode (`pooler = "transaction"`).
    pub fn pooled(mut self, pooled: bool) -> Db {
        self.pooled = pooled;
        self
    }

    /// For the connections that read the log and write outcomes back.
    pub fn for_queue(mut self) -> Db {
        self.queue = true;
        self
    }

    /// The current connection, connecting (and preparing) if there is none.
    pub async fn conn(&self) -> Result<std::sync::Arc<Conn>> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            if !c.client.is_closed() {
                return Ok(c.clone());
            }
        }
        *current = None;
        let result = async {
            let (client, _driver) = connect(&self.url).await?;
            // The relay's own writes (claims, outcomes) need not wait for a
            // WAL flush: if Postgres crashes and forgets the last of them, the
            // rows come back through their leases and are re-sent with the
            // same webhook-id, which at-least-once allows. The events
            // themselves are written by the application's transactions, whose
            // durability this does not touch. It saves a disk flush per claim.
            //
            // enable_seqscan = off: every statement the relay runs is meant
            // to be a few index look-ups (claims and write-backs address the
            // rows they change by ctid, see sql/claim.sql). The outbox swings
            // from empty to busy far faster than its statistics follow, and a
            // plan made while it looked empty stays cached for the life of the
            // connection: planned so, claims and write-backs became
            // sequential scans that read the whole table for every batch
            // (20 ms and more instead of 0.5 ms; BENCHMARKS.md).
            //
            // Behind a pooler in transaction mode a SET would stay on whichever
            // server connection ran it, for other clients too: the settings
            // then belong on the relay's role (docs/deployment.md).
            if !self.pooled {
                client
                    .batch_execute(SESSION_SETUP)
                    .await
                    .context("setting up the session")?;
                if self.queue {
                    client
                        .batch_execute(QUEUE_SESSION_SETUP)
                        .await
                        .context("setting up the session")?;
                }
            }
            let conn = Conn::make(client, self.pooled).await?;
            Ok::<_, anyhow::Error>(std::sync::Arc::new(conn))
        }
        .await;
        match result {
            Ok(conn) => {
                *current = Some(conn.clone());
                self.metrics.set_db_ok(true);
                Ok(conn)
            }
            Err(e) => {
                self.metrics.set_db_ok(false);
                Err(e)
            }
        }
    }

    /// Records the outcome of a query: a failure marks the database down
    /// (readiness) until a query works again.
    pub fn report<T>(&self, result: &std::result::Result<T, tokio_postgres::Error>) {
        match result {
            Ok(_) => self.metrics.set_db_ok(true),
            // An error the server answered with (or a bad parameter) says
            // nothing about the connection; only a lost connection does.
            Err(e) if is_connection_error(e) => self.metrics.set_db_ok(false),
            Err(_) => {}
        }
    }
}

/// Whether an error means the connection is gone (as opposed to a statement
/// the server refused).
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    e.is_closed()
        || (e.as_db_error().is_none() && e.source().is_some_and(|s| s.is::<std::io::Error>()))
        || e.as_db_error().is_some_and(|db| {
            // admin_shutdown, crash_shutdown, cannot_connect_now
            matches!(db.code().code(), "57P01" | "57P02" | "57P03")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_database_url("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(
            redact_database_url("host=db user=app password=s3cret dbname=app"),
            "host=db user=app password=*** dbname=app"
        );
    }
}
