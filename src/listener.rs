//! The dedicated LISTEN connection: turns NOTIFYs on `webhook_outbox` into
//! wake-ups for the endpoint loops. A hint, never the truth: the loops also
//! poll, and every (re)connect sends a wake-up so that rows written while the
//! listener was away are picked up at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The NOTIFY channel the triggers use.
pub const CHANNEL: &str = "webhook_outbox";
/// How often the idle connection is checked with a query.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may take before the connection is deemed dead.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs until `shutdown`; bumps `wake` for every notification and after every
/// (re)connect.
pub async fn run(
    url: String,
    wake: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&url, &wake, &metrics, &shutdown).await {
            Ok(()) => return, // shutdown
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                // A pooler (or a server) that will not LISTEN: trying again
                // would not change its mind.
                tracing::warn!(error = %format!("{e:#}"), "the server refused LISTEN; new rows are found by the poll timer");
                metrics.set_no_listener();
                return;
            }
            Err(e) => {
                metrics.set_listener_ok(false);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "LISTEN connection lost");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: Ok on shutdown, Err when the connection fails.
async fn session(
    url: &str,
    wake: &watch::Sender<u64>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (client, mut connection) = crate::db::open(url).await?;
    // The connection must be polled for the client's queries to run and for
    // notifications to arrive; a forwarding task does both.
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection error");
                    break;
                }
            }
        }
    });
    let _abort_driver = AbortOnDrop(driver);

    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        if let Some(db) = e.as_db_error() {
            return Err(anyhow::Error::new(Refused(format!(
                "{}: {}",
                db.severity(),
                db.message()
            ))));
        }
        return Err(e).context("LISTEN");
    }
    metrics.set_listener_ok(true);
    tracing::info!(channel = CHANNEL, "listening for wake-ups");
    // Catch up on anything written while we were not listening.
    wake.send_modify(|n| *n += 1);

    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            n = notifications.recv() => {
                if n.is_none() {
                    anyhow::bail!("the connection closed");
                }
                // Coalesce a burst into one wake-up.
                while notifications.try_recv().is_ok() {}
                tracing::trace!("NOTIFY received; waking the endpoint loops");
                wake.send_modify(|n| *n += 1);
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e).context("ping"),
                    Err(_) => anyhow::bail!("ping got no answer within {PING_TIMEOUT:?}"),
                }
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The server answered LISTEN with an error (not a lost connection).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LISTEN: {}", self.0)
    }
}

impl std::error::Error for Refused {}
