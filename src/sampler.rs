//! The row counts behind `/metrics`, sampled every few seconds.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::metrics::{EndpointLabels, Metrics, RowLabels};

/// How often the row counts for /metrics are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Samples rows by status and the most overdue pending row per endpoint.
pub async fn run_sampler(
    db: Arc<Db>,
    metrics: Arc<Metrics>,
    endpoints: Vec<String>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(conn) = db.conn().await else { continue };
        let r = conn
            .query(
                conn.sql(include_str!("../sql/row_counts.sql")),
                &[&endpoints],
            )
            .await;
        db.report(&r);
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
