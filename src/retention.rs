//! Retention: removes delivered rows and attempts older than the configured
//! ages, in short bounded batches, so the history stays the size the operator
//! chose. Dead rows are never removed here (`webhook.purge_dead` does that).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::db::Db;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Delivered outbox rows (their attempts went with them).
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
        swept.delivered = sweep_one(
            db,
            include_str!("../sql/retention_delivered.sql"),
            age,
            policy.batch,
            shutdown,
        )
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
