//! The row counts behind `/metrics`, sampled every few seconds.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::metrics::{EndpointLabels, Metrics, RowLabels};

/// How often the row counts for /metrics are sampled, at most.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// A sample that took this long waits this many times as long before the
/// next: counting a backlog of a million rows takes the database seconds,
/// and the sampler must not take more than a few per cent of its time.
const SAMPLE_SPACING: u32 = 20;

/// When the next sample is due, after one that took `took`.
fn next_sample(took: Duration) -> Duration {
    SAMPLE_INTERVAL.max(took * SAMPLE_SPACING)
}

/// Samples rows by status and the most overdue pending row per endpoint.
pub async fn run_sampler(
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    endpoints: Vec<String>,
    shutdown: CancellationToken,
) {
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.cancelled() => return,
        }
        let started = tokio::time::Instant::now();
        next = started + SAMPLE_INTERVAL;
        let Ok(conn) = db.conn().await else { continue };
        let r = conn
            .query(
                conn.sql(include_str!("../sql/row_counts.sql")),
                &[&endpoints],
            )
            .await;
        db.report(&r);
        next = started + next_sample(started.elapsed());
        let Ok(rows) = r else { continue };
        for row in rows {
            let endpoint: String = row.get(0);
            for (i, status) in [(1, "pending"), (2, "in_flight"), (3, "dead")] {
                metrics
                    .rows
                    .get_or_create(&RowLabels {
                        endpoint: endpoint.clone(),
                        status,
                    })
                    .set(row.get::<_, i64>(i));
            }
            metrics
                .oldest_pending_seconds
                .get_or_create(&EndpointLabels { endpoint })
                .set(row.get::<_, f64>(4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sample_spaces_the_next() {
        assert_eq!(next_sample(Duration::from_millis(5)), SAMPLE_INTERVAL);
        assert_eq!(next_sample(Duration::from_secs(2)), Duration::from_secs(40));
    }
}
