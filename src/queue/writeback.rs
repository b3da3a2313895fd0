//! Writes outcomes back in batches: one statement (sql/queue/write_back.sql)
//! for every outcome that finished since the last write, with the holds,
//! parks, redeliveries and dead rows they imply; then gives the events'
//! tokens back, so the partitions' cursors can move past them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cursor::Token;
use crate::db::Db;
use crate::metrics::Metrics;

/// Most outcomes written by one statement.
pub const MAX_BATCH: usize = 1000;
/// A batch smaller than this waits up to GATHER_WAIT for more outcomes.
const GATHER_ENOUGH: usize = 200;
const GATHER_WAIT: Duration = Duration::from_millis(10);

/// The outcome of one attempt.
#[derive(Debug)]
pub struct Completion {
    pub id: i64,
    /// The row's attempt count after this attempt (the fence expects one less).
    pub attempt: i32,
    /// The row version read (its ctid), the fence with the count.
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

/// Outcomes on their way to the database, by outbox id and partition: a
/// look at the holds, parked events or redeliveries made meanwhile still
/// finds them there and must not send them again, and a partition is only
/// given back once none of its outcomes is on its way.
#[derive(Debug, Clone, Default)]
pub struct Unwritten(Arc<std::sync::Mutex<std::collections::HashMap<i64, i32>>>);

impl Unwritten {
    /// `id`'s outcome is being written; the guard's drop says it is done.
    pub fn add(&self, id: i64, partition: i32) -> Pending {
        self.lock().insert(id, partition);
        Pending {
            set: self.clone(),
            id,
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.lock().contains_key(&id)
    }

    /// The ids on their way now. A look at the database taken after this
    /// must skip these as well as those still on their way when it returns:
    /// its snapshot may predate the commit of an outcome that has since
    /// left this set.
    pub fn ids(&self) -> std::collections::HashSet<i64> {
        self.lock().keys().copied().collect()
    }

    /// Whether an outcome of the partition is on its way.
    pub fn any_in(&self, partition: i32) -> bool {
        self.lock().values().any(|p| *p == partition)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, i32>> {
        // A map of ids, changed by one insert or remove at a time: a panic
        // cannot leave it half-changed.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One outcome on its way (see [`Unwritten`]).
#[derive(Debug)]
pub struct Pending {
    set: Unwritten,
    id: i64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

/// What the write-back writes.
#[derive(Debug)]
pub enum Write {
    Outcome {
        c: Completion,
        /// The ordering key, for an ordered event (holds and parks are by key).
        key: Option<String>,
        /// Where the event came from: `log`, `parked`, `held` or `redelivery`.
        source: &'static str,
        /// Its retries go through `webhook.redeliveries`.
        loose: bool,
        /// A delivered probe of a paused endpoint.
        probe: bool,
        token: Token,
        /// Dropped once the outcome is written.
        pending: Pending,
    },
    /// A probe that failed: only its attempt is recorded.
    ProbeFailed {
        id: i64,
        attempt: i32,
        started_at: SystemTime,
        ms: i32,
        response_status: Option<i32>,
        response_body: Option<String>,
        error: Option<String>,
    },
}

/// Runs until every sender is gone and the last batch is written. While the
/// database is down it keeps the batch and retries; `abandon` ends that wait
/// (the events are then read again after a restart and re-sent).
pub async fn run(
    db: Arc<Db>,
    mut rx: mpsc::Receiver<Write>,
    relay_name: String,
    metrics: Arc<Metrics>,
    abandon: CancellationToken,
) {
    let _ = &metrics;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // A small batch waits up to GATHER_WAIT for more: each statement has
        // a fixed cost on the database, and the outcome of a delivery that
        // already happened loses nothing by reaching its row a moment later.
        let gather_until = tokio::time::Instant::now() + GATHER_WAIT;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) if batch.len() >= GATHER_ENOUGH => break,
                Err(_) => match tokio::time::timeout_at(gather_until, rx.recv()).await {
                    Ok(Some(w)) => batch.push(w),
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
                            tracing::error!(rows = batch.len(), "giving up writing outcomes at shutdown; those events are sent again after a restart");
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for w in batch.drain(..) {
            if let Write::Outcome { token, .. } = w {
                token.settle();
            }
        }
    }
}

async fn write(db: &Db, batch: &[Write], relay_name: &str) -> anyhow::Result<()> {
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
    let mut versions = Vec::new();
    let mut keys = Vec::new();
    let mut sources = Vec::new();
    let mut loose_flags = Vec::new();
    let mut probe_flags = Vec::new();
    for w in batch {
        match w {
            Write::Outcome {
                c,
                key,
                source,
                loose,
                probe,
                ..
            } => {
                ids.push(c.id);
                attempts.push(c.attempt);
                statuses.push(c.status);
                started.push(c.started_at);
                ms.push(c.ms);
                response_statuses.push(c.response_status);
                bodies.push(c.response_body.as_deref());
                errors.push(c.error.as_deref());
                next_at.push(c.next_attempt_at);
                versions.push(c.version.as_str());
                keys.push(key.as_deref());
                sources.push(*source);
                loose_flags.push(*loose);
                probe_flags.push(*probe);
            }
            Write::ProbeFailed {
                id,
                attempt,
                started_at,
                ms,
                response_status,
                response_body,
                error,
            } => {
                let r = conn
                    .execute(
                        &conn.st.probe_failed,
                        &[
                            id,
                            attempt,
                            started_at,
                            ms,
                            response_status,
                            response_body,
                            error,
                            &relay_name,
                        ],
                    )
                    .await;
                db.report(&r);
                r?;
            }
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    // Deliveries of events read from the log touch nothing but the outbox
    // row and the attempt: the lean statement, without the general one's
    // look at holds, parks, redeliveries and dead rows.
    let plain = statuses.iter().all(|s| *s == "delivered") && sources.iter().all(|s| *s == "log");
    // $1-$11 are the same in both statements.
    let shared: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
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
        &versions,
    ];
    let r = if plain {
        let params: Vec<_> = shared.iter().copied().chain([&probe_flags as _]).collect();
        conn.execute(&conn.st.write_back_delivered, &params).await
    } else {
        let rest: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&keys, &sources, &loose_flags, &probe_flags];
        let params: Vec<_> = shared.iter().copied().chain(rest).collect();
        conn.execute(&conn.st.write_back, &params).await
    };
    db.report(&r);
    let written = r?;
    if written < ids.len() as u64 {
        tracing::info!(
            stale = ids.len() as u64 - written,
            "outcomes not written: their rows changed since they were read (replayed, or taken over)"
        );
    }
    Ok(())
}
