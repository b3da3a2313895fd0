//! Retention: removes delivered rows and attempts older than the configured
//! ages, in short bounded batches, so the history stays the size the operator
//! chose. Dead rows are never removed here (`webhook.purge_dead` does that).
//! Delivered rows are removed oldest first by id, their age counted from
//! `created_at`; each sweep walks from the oldest row to the first young one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::db::Db;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Delivered outbox rows (their attempts went in the same statement).
    pub delivered: u64,
    /// Attempts removed for their own age.
    pub attempts: u64,
}

/// Sweeps every `policy.interval` until `shutdown`.
pub async fn run(db: Arc<Db>, policy: RetentionConfig, shutdown: CancellationToken) {
    if policy.delivered.is_none() && policy.attempts.is_none() {
        tracing::info!("retention is off: delivered rows and attempts are kept forever");
        return;
    }
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match sweep(&db, &policy, &shutdown).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(
                    delivered_rows = swept.delivered,
                    attempts = swept.attempts,
                    "retention removed old history"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "retention failed; will try again"),
        }
    }
}

/// Deletes batch after batch until a batch comes back short (nothing older
/// is left) or shutdown begins. Each batch is its own short autocommit
/// statement: no lock outlives it.
pub async fn sweep(
    db: &Db,
    policy: &RetentionConfig,
    shutdown: &CancellationToken,
) -> Result<Swept> {
    let mut swept = Swept::default();
    if let Some(age) = policy.delivered {
        swept.delivered = sweep_delivered(db, age, policy.batch, shutdown)
            .await
            .context("removing old delivered rows")?;
    }
    if let Some(age) = policy.attempts {
        swept.attempts = sweep_one(
            db,
            include_str!("../sql/retention_attempts.sql"),
            age,
            policy.batch,
            shutdown,
        )
        .await
        .context("removing old attempts")?;
    }
    Ok(swept)
}

/// Delivered rows, window after window of `batch` rows in id order from the
/// oldest (sql/retention_delivered.sql), until a window reaches a row still
/// young or the end of the table. Starting from the oldest row every sweep
/// means a row that was pending or dead when a sweep passed it (a retry, a
/// replay) is looked at again by the next one; what each sweep reads before
/// it gets to old delivered rows is the dead and unsettled rows at the old
/// end of the table.
async fn sweep_delivered(
    db: &Db,
    age: Duration,
    batch: u32,
    shutdown: &CancellationToken,
) -> Result<u64> {
    let conn = db.conn().await?;
    let statement = conn.sql(include_str!("../sql/retention_delivered.sql"));
    let (age, batch) = (age.as_secs_f64(), i64::from(batch));
    let (mut total, mut after) = (0, 0i64);
    while !shutdown.is_cancelled() {
        let r = conn.query_one(statement, &[&age, &batch, &after]).await;
        db.report(&r);
        let row = r?;
        total += row.get::<_, i64>(0) as u64;
        match row.get::<_, Option<i64>>(1) {
            Some(next) => after = next,
            None => break,
        }
    }
    Ok(total)
}

async fn sweep_one(
    db: &Db,
    sql: &'static str,
    age: Duration,
    batch: u32,
    shutdown: &CancellationToken,
) -> Result<u64> {
    let conn = db.conn().await?;
    let statement = conn.sql(sql);
    let (age, batch) = (age.as_secs_f64(), i64::from(batch));
    let mut total = 0;
    while !shutdown.is_cancelled() {
        let r = conn.execute(statement, &[&age, &batch]).await;
        db.report(&r);
        let n = r?;
        total += n;
        if n < batch as u64 {
            break;
        }
    }
    Ok(total)
}
