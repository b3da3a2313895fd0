//! Attempts per endpoint and minute, counted in memory as they finish and
//! added to `webhook.endpoint_minutes` about once a second (by the breaker's
//! task), so the status page reads a few small rows instead of counting
//! `webhook.attempts`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::db::Db;

/// Delivered and failed attempts by minute (Unix seconds of its start).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<i64, (i32, i32)>);

impl Counts {
    /// Counts one attempt that started at `at`.
    pub fn add(&mut self, delivered: bool, at: SystemTime) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs() as i64;
        let slot = self.0.entry(secs - secs % 60).or_default();
        if delivered {
            slot.0 = slot.0.saturating_add(1);
        } else {
            slot.1 = slot.1.saturating_add(1);
        }
    }

    /// Adds `other` in (a batch that could not be written, put back).
    pub fn merge(&mut self, other: Counts) {
        for (minute, (d, f)) in other.0 {
            let slot = self.0.entry(minute).or_default();
            slot.0 = slot.0.saturating_add(d);
            slot.1 = slot.1.saturating_add(f);
        }
    }
}

/// The counts of one endpoint not yet written.
#[derive(Default)]
pub struct Tally(Mutex<Counts>);

impl Tally {
    pub fn add(&self, delivered: bool, at: SystemTime) {
        // Held for a map update; a poisoned lock still holds whole counts.
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(delivered, at);
    }

    /// Writes what was counted since the last call; on failure the counts
    /// stay for the next one.
    pub async fn flush(&self, db: &Db, endpoint_id: i32) -> anyhow::Result<()> {
        let counts = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        if counts.0.is_empty() {
            return Ok(());
        }
        let minutes: Vec<SystemTime> = counts
            .0
            .keys()
            .map(|m| UNIX_EPOCH + Duration::from_secs(*m as u64))
            .collect();
        let delivered: Vec<i32> = counts.0.values().map(|c| c.0).collect();
        let failed: Vec<i32> = counts.0.values().map(|c| c.1).collect();
        let result = async {
            let conn = db.conn().await?;
            let r = conn
                .execute(
                    &conn.st.count_minutes,
                    &[&endpoint_id, &minutes, &delivered, &failed],
                )
                .await;
            db.report(&r);
            r?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if result.is_err() {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .merge(counts);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_fall_into_their_minute() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let mut c = Counts::default();
        c.add(true, t(120));
        c.add(false, t(179));
        c.add(true, t(180));
        assert_eq!(c.0, BTreeMap::from([(120, (1, 1)), (180, (1, 0))]));
        let mut older = Counts::default();
        older.add(true, t(130));
        c.merge(older);
        assert_eq!(c.0[&120], (2, 1));
    }
}
