//! Writes attempt outcomes back to `webhook.outbox` and `webhook.attempts` in
//! batches: one statement for everything that finished since the last write.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::metrics::Metrics;

/// Most outcomes written by one statement.
pub const MAX_BATCH: usize = 1000;
/// A batch smaller than this waits up to GATHER_WAIT for more outcomes.
const GATHER_ENOUGH: usize = 64;
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// The outcome of one claimed row.
#[derive(Debug)]
pub enum Done {
    /// An attempt was made (or the row was given up without one).
    Attempted(Completion),
    /// The row goes back to pending unattempted (shutdown deadline).
    Released {
        id: i64,
        attempt: i32,
        lease: SystemTime,
        /// The row version the claim made (its ctid), part of the fence.
        version: String,
    },
}

#[derive(Debug)]
pub struct Completion {
    pub id: i64,
    pub attempt: i32,
    /// The lease end the row was claimed with (the fence, with `attempt`).
    pub lease: SystemTime,
    /// The row version the claim made (its ctid), part of the fence.
    pub version: String,
    /// `delivered`, `pending` (retry later) or `dead`.
    pub status: &'static str,
    pub started_at: SystemTime,
    pub ms: i32,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    /// For a retry: when.
    pub next_attempt_at: Option<SystemTime>,
}

/// Runs until every sender is gone and the last batch is written. While the
/// database is down it keeps the batch and retries; `abandon` ends that wait
/// (the rows then stay in_flight until their lease expires and are re-sent).
pub async fn run(
    db: Arc<Db>,
    mut rx: mpsc::Receiver<Done>,
    relay_name: String,
    metrics: Arc<Metrics>,
    abandon: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // A small batch waits up to GATHER_WAIT for more outcomes: each
        // write-back statement has a fixed cost on the database, and the
        // outcome of a delivery that already happened loses nothing by
        // reaching its row a millisecond or two later.
        let gather_until = tokio::time::Instant::now() + GATHER_WAIT;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(done) => batch.push(done),
                Err(_) if batch.len() >= GATHER_ENOUGH => break,
                Err(_) => match tokio::time::timeout_at(gather_until, rx.recv()).await {
                    Ok(Some(done)) => batch.push(done),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match write(&db, &batch, &relay_name).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), rows = batch.len(), "writing outcomes failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = abandon.cancelled() => {
                            tracing::error!(rows = batch.len(), "giving up writing outcomes at shutdown; the rows will be re-sent after their lease");
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let released = batch
            .iter()
            .filter(|d| matches!(d, Done::Released { .. }))
            .count();
        metrics.released.inc_by(released as u64);
        batch.clear();
    }
}

async fn write(db: &Db, batch: &[Done], relay_name: &str) -> anyhow::Result<()> {
    let conn = db.conn().await?;
    let mut ids = Vec::new();
    let mut attempts = Vec::new();
    let mut statuses = Vec::new();
    let mut started = Vec::new();
    let mut ms = Vec::new();
    let mut response_statuses = Vec::new();
    let mut bodies = Vec::new();
    let mut errors = Vec::new();
    let mut next_at = Vec::new();
    let mut released_ids = Vec::new();
    let mut released_attempts = Vec::new();
    let mut leases = Vec::new();
    let mut released_leases = Vec::new();
    let mut versions = Vec::new();
    let mut released_versions = Vec::new();
    for done in batch {
        match done {
            Done::Attempted(c) => {
                ids.push(c.id);
                attempts.push(c.attempt);
                statuses.push(c.status);
                started.push(c.started_at);
                ms.push(c.ms);
                response_statuses.push(c.response_status);
                bodies.push(c.response_body.as_deref());
                errors.push(c.error.as_deref());
                next_at.push(c.next_attempt_at);
                leases.push(c.lease);
                versions.push(c.version.as_str());
            }
            Done::Released {
                id,
                attempt,
                lease,
                version,
            } => {
                released_ids.push(*id);
                released_attempts.push(*attempt);
                released_leases.push(*lease);
                released_versions.push(version.as_str());
            }
        }
    }
    if !ids.is_empty() {
        let r = conn
            .execute(
                &conn.st.complete,
                &[
                    &ids,
                    &attempts,
                    &statuses,
                    &started,
                    &ms,
                    &response_statuses,
                    &bodies,
                    &errors,
                    &next_at,
                    &relay_name,
                    &leases,
                    &versions,
                ],
            )
            .await;
        db.report(&r);
        let written = r?;
        if written < ids.len() as u64 {
            tracing::info!(
                stale = ids.len() as u64 - written,
                "outcomes not written: their lease had expired and the rows were taken back"
            );
        }
    }
    if !released_ids.is_empty() {
        let r = conn
            .execute(
                &conn.st.release,
                &[
                    &released_ids,
                    &released_attempts,
                    &released_leases,
                    &released_versions,
                ],
            )
            .await;
        db.report(&r);
        r?;
    }
    Ok(())
}
