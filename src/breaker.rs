//! The circuit breaker, one task per endpoint: reports this relay's outcomes
//! to `webhook.endpoints` (which pauses the endpoint once every attempt has
//! failed for `pause_after`), follows the endpoint's paused state there (set
//! by any relay, or by hand), and while the breaker holds it paused sends one
//! probe per `probe_interval`, whose success resumes it (docs/delivery.md).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::dispatcher::{Endpoint, Shared};
use crate::metrics::{ChangeLabels, EndpointLabels};
use crate::tally::Tally;

/// Longest time between two reports (and reads of the paused state): how
/// long a relay may take to notice a pause or resume made elsewhere. Its
/// claims stop at once regardless (sql/claim.sql checks the state).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Outcomes seen since the last report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcomes {
    /// The latest successful attempt.
    pub latest_success: Option<SystemTime>,
    /// The first failed attempt after `latest_success`.
    pub first_failure: Option<SystemTime>,
}

impl Outcomes {
    /// Adds one attempt's outcome, started at `at`.
    pub fn note(&mut self, delivered: bool, at: SystemTime) {
        if delivered {
            if self.latest_success.is_none_or(|s| s < at) {
                self.latest_success = Some(at);
            }
            if self.first_failure.is_some_and(|f| f <= at) {
                self.first_failure = None;
            }
        } else if self.latest_success.is_none_or(|s| s < at)
            && self.first_failure.is_none_or(|f| f > at)
        {
            self.first_failure = Some(at);
        }
    }

    /// Puts back a report that could not be written, under what came since.
    pub fn merge_older(&mut self, older: Outcomes) {
        let newer = *self;
        *self = older;
        if let Some(s) = newer.latest_success {
            self.note(true, s);
        }
        if let Some(f) = newer.first_failure {
            self.note(false, f);
        }
    }
}

/// An endpoint's breaker state inside this relay.
pub struct Breaker {
    outcomes: Mutex<Outcomes>,
    paused: watch::Sender<bool>,
    /// Attempts per minute, written with each report (src/tally.rs).
    tally: Tally,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            outcomes: Mutex::new(Outcomes::default()),
            paused: watch::Sender::new(false),
            tally: Tally::default(),
        }
    }
}

impl Breaker {
    /// Records one attempt's outcome for the next report (and the counts).
    pub fn note(&self, delivered: bool, at: SystemTime) {
        // The lock guards two fields for a moment; a panic cannot poison it
        // half-way, so a poisoned lock still holds consistent data.
        self.tally.add(delivered, at);
        let mut o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        o.note(delivered, at);
    }

    fn take(&self) -> Outcomes {
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn put_back(&self, older: Outcomes) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge_older(older);
    }

    /// The paused state as a read of the log found it (between two reports).
    pub fn seen_paused(&self, paused: bool) {
        self.paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused);
    }

    /// Whether the endpoint is paused, as this relay last read it; changes
    /// wake the endpoint's loop.
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }
}

/// The endpoint's state as `webhook.breaker_report` returns it.
#[derive(Debug, Clone, PartialEq)]
struct State {
    paused_at: Option<DateTime<Utc>>,
    paused_by: Option<String>,
    failing_since: Option<DateTime<Utc>>,
    paused_now: bool,
}

/// Runs until `stop_claiming`.
pub async fn run(shared: Arc<Shared>, ep: Arc<Endpoint>) {
    let stop = shared.stop_claiming.clone();
    // A quarter of the probe interval at most, so a probe follows within a
    // quarter interval of its turn.
    let every = REPORT_EVERY.min(ep.cfg.probe_interval / 4);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: Option<State> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = ep.breaker.tally.flush(&shared.db, ep.id).await {
            tracing::debug!(endpoint = %ep.cfg.name, error = %format!("{e:#}"), "writing attempt counts failed; will retry");
        }
        let outcomes = ep.breaker.take();
        let state = match report(&shared, &ep, outcomes).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                ep.breaker.put_back(outcomes);
                tracing::debug!(endpoint = %ep.cfg.name, error = %format!("{e:#}"), "breaker report failed; will retry");
                continue;
            }
        };
        log_change(&shared, &ep, known.as_ref(), &state);
        let paused = state.paused_at.is_some();
        ep.breaker
            .paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused);
        shared
            .metrics
            .endpoint_paused
            .get_or_create(&EndpointLabels {
                endpoint: ep.cfg.name.clone(),
            })
            .set(i64::from(paused));
        let by_breaker = state.paused_by.as_deref() == Some("auto");
        known = Some(state);
        if by_breaker {
            if let Err(e) = probe(&shared, &ep).await {
                tracing::debug!(endpoint = %ep.cfg.name, error = %format!("{e:#}"), "claiming a probe failed; will retry");
            }
        }
    }
}

async fn report(
    shared: &Shared,
    ep: &Endpoint,
    outcomes: Outcomes,
) -> anyhow::Result<Option<State>> {
    let conn = shared.db.conn().await?;
    let pause_after = ep.cfg.pause_after.map(|d| d.as_secs_f64());
    let r = conn
        .query_opt(
            &conn.st.breaker_report,
            &[
                &ep.id,
                &outcomes.latest_success,
                &outcomes.first_failure,
                &pause_after,
            ],
        )
        .await;
    shared.db.report(&r);
    Ok(r?.map(|row| State {
        paused_at: row.get(0),
        paused_by: row.get(1),
        failing_since: row.get(2),
        paused_now: row.get(5),
    }))
}

/// One log line and one counter step per change of the paused state.
fn log_change(shared: &Shared, ep: &Endpoint, before: Option<&State>, now: &State) {
    let was_paused = before.map(|s| s.paused_at.is_some());
    let paused = now.paused_at.is_some();
    let by = now.paused_by.as_deref().unwrap_or("");
    let change = match (was_paused, paused) {
        (Some(false) | None, true) => "paused",
        (Some(true), false) => "resumed",
        (Some(true), true) if before.and_then(|s| s.paused_by.as_deref()) != Some(by) => "paused",
        _ => return,
    };
    let name = &ep.cfg.name;
    let since = now.failing_since.map(|t| t.to_rfc3339());
    match (change, now.paused_now, was_paused) {
        ("paused", true, _) => tracing::warn!(
            endpoint = %name,
            failing_since = since.as_deref().unwrap_or("?"),
            pause_after = %humantime::format_duration(ep.cfg.pause_after.unwrap_or_default()),
            probe_every = %humantime::format_duration(ep.cfg.probe_interval),
            "endpoint paused: every attempt has failed for pause_after; its rows wait, one probe per probe interval"
        ),
        ("paused", false, None) => {
            tracing::warn!(endpoint = %name, paused_by = by, "endpoint is paused; its rows wait until it is resumed")
        }
        ("paused", false, _) if by == "hand" => {
            tracing::warn!(endpoint = %name, "endpoint paused by hand; no probes until `outbox-relay resume`")
        }
        ("paused", false, _) => {
            tracing::warn!(endpoint = %name, "endpoint paused by the circuit breaker (another relay's report)")
        }
        _ => tracing::info!(endpoint = %name, "endpoint resumed; its backlog drains"),
    }
    // A pause found at start is logged, but not counted: this relay did not
    // see it happen.
    if was_paused.is_some() {
        shared
            .metrics
            .breaker_changes
            .get_or_create(&ChangeLabels {
                endpoint: name.clone(),
                change,
            })
            .inc();
    }
}

/// Takes the next probe if it is this relay's turn; the endpoint's loop
/// sends it (src/dispatcher.rs), and its success resumes the endpoint.
async fn probe(shared: &Arc<Shared>, ep: &Arc<Endpoint>) -> anyhow::Result<()> {
    // A free slot first, so a probe never exceeds max_in_flight.
    if ep.slots.available_permits() == 0 {
        return Ok(());
    }
    let conn = shared.db.conn().await?;
    let r = conn
        .query_opt(
            &conn.st.probe_turn,
            &[&ep.id, &ep.cfg.probe_interval.as_secs_f64()],
        )
        .await;
    shared.db.report(&r);
    if r?.is_some() {
        ep.probe.notify_one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_failure_run_starts_after_the_latest_success() {
        let mut o = Outcomes::default();
        o.note(false, t(10));
        o.note(false, t(5));
        o.note(false, t(12));
        assert_eq!(o.first_failure, Some(t(5)));
        o.note(true, t(20));
        assert_eq!(
            o,
            Outcomes {
                latest_success: Some(t(20)),
                first_failure: None
            }
        );
        // A failure that started before the success reports late: no run.
        o.note(false, t(15));
        assert_eq!(o.first_failure, None);
        o.note(false, t(25));
        o.note(false, t(30));
        assert_eq!(o.first_failure, Some(t(25)));
        // An older success does not end a newer run.
        o.note(true, t(22));
        assert_eq!(o.latest_success, Some(t(22)));
        assert_eq!(o.first_failure, Some(t(25)));
    }

    #[test]
    fn a_report_put_back_merges_under_newer_outcomes() {
        let mut newer = Outcomes::default();
        newer.note(false, t(40));
        let mut older = Outcomes::default();
        older.note(false, t(30));
        newer.merge_older(older);
        assert_eq!(newer.first_failure, Some(t(30)));

        let mut newer = Outcomes::default();
        newer.note(true, t(50));
        let mut older = Outcomes::default();
        older.note(false, t(30));
        newer.merge_older(older);
        assert_eq!(
            newer,
            Outcomes {
                latest_success: Some(t(50)),
                first_failure: None
            }
        );
    }
}
