//! One attempt of one event, as a task: wait for the rate limiter, POST,
//! decide what comes next (delivered, retry, dead), and hand the outcome back
//! to the endpoint's loop.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{Endpoint, Shared};
use crate::deliver;
use crate::metrics::OutcomeLabels;
use crate::queue::reader::Event;
use crate::queue::writeback::Completion;
use crate::retry::{self, NextStep};

/// What became of a send.
#[derive(Debug)]
pub enum Result {
    /// An attempt was made.
    Attempted { c: Completion, delivered: bool },
    /// Never finished (shutdown): nothing is written; the event is read again
    /// after a restart.
    Abandoned,
}

/// An event back from its attempt.
#[derive(Debug)]
pub struct Sent {
    pub ev: Event,
    pub probe: bool,
    pub result: Result,
}

/// Sends `ev` and reports to `back`.
pub async fn send(
    shared: Arc<Shared>,
    ep: Arc<Endpoint>,
    ev: Event,
    permit: OwnedSemaphorePermit,
    probe: bool,
    back: mpsc::UnboundedSender<Sent>,
) {
    let _permit = permit;
    if let Some(limiter) = &ep.limiter {
        tokio::select! {
            _ = limiter.until_ready() => {}
            _ = shared.stop_claiming.cancelled() => {
                let _ = back.send(Sent { ev, probe, result: Result::Abandoned });
                return;
            }
        }
    }
    let attempt = tokio::select! {
        a = deliver::attempt(shared.http.route(&ep.cfg.name), &ep.cfg, &ep.headers, shared.ssrf.as_deref(), &ev.event_id, ev.payload.clone()) => a,
        _ = shared.abort_deliveries.cancelled() => {
            tracing::info!("shutdown deadline passed mid-request; the event is sent again after a restart");
            let _ = back.send(Sent { ev, probe, result: Result::Abandoned });
            return;
        }
    };
    ep.breaker.note(attempt.delivered(), attempt.started_at);
    let ms = attempt.elapsed.as_millis().min(i32::MAX as u128) as i32;
    shared.metrics.observe_attempt(&ep.cfg.name, &attempt);
    let number = ev.attempts + 1;
    let delivered = attempt.delivered();
    let (status, next_attempt_at, error, outcome) = if delivered {
        tracing::debug!(status = attempt.status, ms, "delivered");
        ("delivered", None, None, "delivered")
    } else if probe {
        let error = attempt.error.clone().unwrap_or_default();
        tracing::debug!(status = attempt.status, ms, error = %error, "probe failed");
        ("pending", None, Some(error), "retry")
    } else {
        let error = attempt.error.clone().unwrap_or_default();
        match retry::next_step(
            &ep.policy,
            number as u32,
            attempt.status,
            attempt.retry_after,
            retry::jitter_unit(),
        ) {
            NextStep::Retry(delay) => {
                tracing::info!(status = attempt.status, ms, error = %error, retry_in = %humantime::format_duration(delay), "attempt failed; will retry");
                (
                    "pending",
                    Some(SystemTime::now() + delay),
                    Some(error),
                    "retry",
                )
            }
            NextStep::Dead(reason) => {
                tracing::warn!(status = attempt.status, ms, error = %error, reason, "attempt failed; giving up");
                (
                    "dead",
                    None,
                    Some(format!("{error}; gave up: {reason}")),
                    "dead",
                )
            }
        }
    };
    if !probe {
        shared
            .metrics
            .attempts
            .get_or_create(&OutcomeLabels {
                endpoint: ep.cfg.name.clone(),
                outcome,
            })
            .inc();
    }
    let c = Completion {
        id: ev.id,
        attempt: number,
        version: ev.version.clone(),
        status,
        started_at: attempt.started_at,
        ms,
        response_status: attempt.status.map(i32::from),
        response_body: attempt.body,
        error,
        next_attempt_at,
    };
    let _ = back.send(Sent {
        ev,
        probe,
        result: Result::Attempted { c, delivered },
    });
}
