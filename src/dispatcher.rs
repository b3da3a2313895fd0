//! One loop per endpoint: wait for a free in-flight slot, claim due rows, hand
//! each to a delivery task; when nothing is due, arm the endpoint's wake-up
//! switch and wait for a NOTIFY, the poll timer or shutdown (docs/wakeup.md).
//!
//! Endpoints never share a queue or a slot, so a slow endpoint only ever
//! holds up its own rows.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::breaker::Breaker;
use crate::completer::{Completion, Done};
use crate::config::EndpointConfig;
use crate::db::Db;
use crate::deliver;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::retry::{self, NextStep, RetryPolicy};

/// Pause after a claim that found fewer rows than it had slots for: the loop
/// has caught up with the writers, and claiming again at once would mostly
/// fetch one row per statement. Waiting a moment lets the next claim take a
/// batch, which costs the database far less per row.
const CAUGHT_UP_PAUSE: Duration = Duration::from_millis(1);
/// With a deep queue, a claim waits up to GATHER_WAIT until this many slots
/// are free (measured: drain 13,500 -> 15,800 deliveries/s, BENCHMARKS.md).
const GATHER_SLOTS: usize = 8;
const GATHER_WAIT: Duration = Duration::from_millis(1);
/// Pause between the empty claims of a lingering loop.
const LINGER_STEP: Duration = Duration::from_millis(1);
/// Empty claims in a row before the loop arms its switch and waits.
const LINGER_CLAIMS: u32 = 3;

/// Longest pause between two checks while waiting for writers that were in
/// progress when the switch was armed.
const SETTLE_MAX_DELAY: Duration = Duration::from_millis(50);

/// An endpoint at run time: its config plus its limits.
pub struct Endpoint {
    pub id: i32,
    pub cfg: EndpointConfig,
    pub headers: HeaderMap,
    pub limiter: Option<DefaultDirectRateLimiter>,
    pub slots: Arc<Semaphore>,
    pub policy: RetryPolicy,
    /// The circuit breaker's view of this endpoint (src/breaker.rs).
    pub breaker: Breaker,
}

impl Endpoint {
    pub fn new(id: i32, cfg: EndpointConfig) -> Endpoint {
        let limiter = cfg.rate_limit.and_then(|rate| {
            let burst = std::num::NonZeroU32::new(cfg.burst.max(1))?;
            let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
            let quota = Quota::with_period(period)?.allow_burst(burst);
            Some(RateLimiter::direct(quota))
        });
        Endpoint {
            id,
            headers: deliver::static_headers(&cfg),
            limiter,
            slots: Arc::new(Semaphore::new(cfg.max_in_flight as usize)),
            policy: RetryPolicy {
                max_attempts: cfg.max_attempts,
                initial: cfg.retry_initial,
                max: cfg.retry_max,
                no_retry_statuses: cfg.no_retry_statuses.clone(),
            },
            breaker: Breaker::default(),
            cfg,
        }
    }
}

/// What every endpoint loop and delivery task shares.
pub struct Shared {
    pub db: Arc<Db>,
    pub http: crate::egress::Clients,
    /// The SSRF guard, when on.
    pub ssrf: Option<Arc<crate::ssrf::Guard>>,
    pub done: mpsc::Sender<Done>,
    pub metrics: Arc<Metrics>,
    pub relay_name: String,
    pub lease: Duration,
    pub claim_batch: u32,
    pub poll_interval: Duration,
    /// Delivery tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Stop claiming (graceful shutdown has begun).
    pub stop_claiming: CancellationToken,
    /// Give up on requests still in flight (the shutdown deadline passed).
    pub abort_deliveries: CancellationToken,
}

/// A claimed row.
struct Claimed {
    id: i64,
    event_id: String,
    attempt: i32,
    payload: String,
    /// The claim's lease end, part of the write-back fence.
    lease: SystemTime,
    /// The row version the claim made (its ctid), part of the fence too.
    version: String,
}

enum Wakeup {
    /// Rows were found last time: the switch is (being) disarmed.
    Busy,
    /// Nothing was due, but rows came moments ago: look again shortly before
    /// paying for the switch (arm, snapshot, settle). Under a steady trickle
    /// the next row is usually found this way, without any NOTIFY.
    Lingering { empty_claims: u32 },
    /// Armed, waiting for writers that were in progress at arming to end.
    Settling {
        snapshot: String,
        delay: Duration,
        until: Instant,
    },
    /// Armed and settled: a NOTIFY will come for new rows.
    Armed,
}

/// The loop for one endpoint; returns once `stop_claiming` is cancelled.
pub async fn run_endpoint(shared: Arc<Shared>, ep: Arc<Endpoint>, mut wake: watch::Receiver<u64>) {
    let mut state = Wakeup::Busy;
    let mut backoff = Duration::from_millis(50);
    let stop = shared.stop_claiming.clone();
    let want = shared.claim_batch.min(ep.cfg.max_in_flight) as usize;
    let mut last_full = false;
    let mut paused = ep.breaker.paused();
    loop {
        // 0. Paused (src/breaker.rs sends the probes): claim nothing, and
        // leave the wake-up switch off so writers send no NOTIFY for it.
        if *paused.borrow_and_update() {
            disarm(&shared, &ep);
            tracing::debug!(endpoint = %ep.cfg.name, "paused; not claiming");
            loop {
                tokio::select! {
                    r = paused.changed() => if r.is_err() || !*paused.borrow_and_update() { break },
                    _ = stop.cancelled() => return,
                }
            }
            state = Wakeup::Busy;
            last_full = false;
        }

        // 1. At least one free slot; take as many more as are free now.
        let first = tokio::select! {
            p = ep.slots.clone().acquire_owned() => p.expect("endpoint semaphores are never closed"),
            _ = stop.cancelled() => break,
        };
        let mut permits = vec![first];
        // Deep queue (the last claim was full): wait a moment for a few more
        // slots, rather than pay a claim statement for every slot that frees.
        let more = GATHER_SLOTS - 1;
        if last_full && want >= GATHER_SLOTS && ep.slots.available_permits() < more {
            let gather = ep.slots.clone().acquire_many_owned(more as u32);
            if let Ok(Ok(mut p)) = tokio::time::timeout(GATHER_WAIT, gather).await {
                while p.num_permits() > 1 {
                    permits.push(p.split(1).expect("more than one permit left"));
                }
                permits.push(p);
            }
        }
        while permits.len() < want {
            match ep.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }

        // 2. Claim (after the settle check, when settling).
        tracing::trace!(endpoint = %ep.cfg.name, slots = permits.len(), "claiming");
        let step = claim_step(&shared, &ep, &state, permits.len()).await;
        let (settled, rows) = match step {
            Ok(v) => {
                backoff = Duration::from_millis(50);
                v
            }
            Err(e) => {
                drop(permits);
                tracing::warn!(endpoint = %ep.cfg.name, error = %format!("{e:#}"), "claiming failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                state = Wakeup::Busy;
                last_full = false;
                continue;
            }
        };

        tracing::trace!(endpoint = %ep.cfg.name, rows = rows.len(), "claimed");
        last_full = !rows.is_empty() && rows.len() == permits.len();
        if !rows.is_empty() {
            if !matches!(state, Wakeup::Busy | Wakeup::Lingering { .. }) {
                disarm(&shared, &ep);
                state = Wakeup::Busy;
            }
            let caught_up = rows.len() < permits.len();
            for (row, permit) in rows.into_iter().zip(permits) {
                let (shared2, ep2) = (shared.clone(), ep.clone());
                let span = tracing::info_span!("deliver", event_id = %row.event_id, endpoint = %ep.cfg.name, attempt = row.attempt);
                shared
                    .tracker
                    .spawn(deliver_row(shared2, ep2, row, permit).instrument(span));
            }
            if caught_up {
                tokio::select! {
                    _ = tokio::time::sleep(CAUGHT_UP_PAUSE) => {}
                    _ = stop.cancelled() => break,
                }
            }
            continue;
        }
        drop(permits);

        // 3. Nothing due.
        state = match state {
            Wakeup::Busy => Wakeup::Lingering { empty_claims: 1 },
            Wakeup::Lingering { empty_claims } if empty_claims < LINGER_CLAIMS => {
                Wakeup::Lingering {
                    empty_claims: empty_claims + 1,
                }
            }
            Wakeup::Lingering { .. } => match arm(&shared, &ep).await {
                Ok(snapshot) => Wakeup::Settling {
                    snapshot,
                    delay: Duration::from_millis(1),
                    until: Instant::now() + shared.poll_interval,
                },
                Err(e) => {
                    tracing::warn!(endpoint = %ep.cfg.name, error = %format!("{e:#}"), "arming the wake-up failed; polling");
                    Wakeup::Busy
                }
            },
            Wakeup::Settling { .. } if settled == Some(true) => Wakeup::Armed,
            Wakeup::Settling {
                snapshot,
                delay,
                until,
            } if Instant::now() < until => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wake.changed() => {}
                    _ = stop.cancelled() => break,
                }
                Wakeup::Settling {
                    snapshot,
                    delay: (delay * 2).min(SETTLE_MAX_DELAY),
                    until,
                }
            }
            // Still unsettled after a whole poll interval (a long transaction
            // elsewhere): stop waiting for it; the poll timer covers it.
            Wakeup::Settling { .. } | Wakeup::Armed => Wakeup::Armed,
        };
        if matches!(state, Wakeup::Lingering { .. }) {
            tokio::select! {
                _ = tokio::time::sleep(LINGER_STEP) => {}
                _ = stop.cancelled() => break,
            }
            continue;
        }
        if matches!(state, Wakeup::Armed) {
            tokio::select! {
                _ = wake.changed() => {}
                _ = paused.changed() => {}
                _ = tokio::time::sleep(shared.poll_interval) => {
                    // Another relay may have disarmed the switch while busy.
                    if let Ok(conn) = shared.db.conn().await {
                        let r = conn.execute(&conn.st.arm, &[&ep.id]).await;
                        shared.db.report(&r);
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
    }
}

/// The settle check (when settling) and the claim, in that order.
async fn claim_step(
    shared: &Shared,
    ep: &Endpoint,
    state: &Wakeup,
    n: usize,
) -> anyhow::Result<(Option<bool>, Vec<Claimed>)> {
    let conn = shared.db.conn().await?;
    let settled = match state {
        Wakeup::Settling { snapshot, .. } => {
            let r = conn.query_one(&conn.st.settled, &[snapshot]).await;
            shared.db.report(&r);
            Some(r?.get::<_, bool>(0))
        }
        _ => None,
    };
    let lease_secs = shared.lease.as_secs_f64();
    let r = conn
        .query(
            &conn.st.claim,
            &[&ep.id, &(n as i64), &lease_secs, &shared.relay_name],
        )
        .await;
    shared.db.report(&r);
    let rows = r?
        .into_iter()
        .map(|r| Claimed {
            id: r.get(0),
            event_id: r.get(1),
            attempt: r.get(2),
            payload: r.get(3),
            lease: r.get(4),
            version: r.get(5),
        })
        .collect();
    Ok((settled, rows))
}

/// Arms the switch, then (after that has committed) takes the snapshot of
/// transactions still in progress.
async fn arm(shared: &Shared, ep: &Endpoint) -> anyhow::Result<String> {
    let conn = shared.db.conn().await?;
    let r = conn.execute(&conn.st.arm, &[&ep.id]).await;
    shared.db.report(&r);
    r?;
    let r = conn.query_one(&conn.st.snapshot, &[]).await;
    shared.db.report(&r);
    Ok(r?.get(0))
}

/// Disarms the switch without waiting: the claim path must not pay a round
/// trip for it, and a lost disarm only costs writers a NOTIFY.
fn disarm(shared: &Arc<Shared>, ep: &Arc<Endpoint>) {
    let (shared, ep) = (shared.clone(), ep.clone());
    tokio::spawn(async move {
        if let Ok(conn) = shared.db.conn().await {
            let r = conn.execute(&conn.st.disarm, &[&ep.id]).await;
            shared.db.report(&r);
        }
    });
}

/// Delivers one claimed row and reports the outcome to the completer.
async fn deliver_row(
    shared: Arc<Shared>,
    ep: Arc<Endpoint>,
    row: Claimed,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let send = |done: Done| {
        let tx = shared.done.clone();
        async move {
            // The completer outlives every delivery task; a send can only fail
            // if it died, and then the lease brings the row back.
            let _ = tx.send(done).await;
        }
    };

    if row.attempt as u32 > ep.cfg.max_attempts {
        // Earlier claims expired without an outcome (their relays died).
        send(Done::Attempted(Completion {
            id: row.id,
            attempt: row.attempt,
            lease: row.lease,
            version: row.version,
            status: "dead",
            started_at: SystemTime::now(),
            ms: 0,
            response_status: None,
            response_body: None,
            error: Some("gave up: max_attempts used up by claims whose lease expired".into()),
            next_attempt_at: None,
        }))
        .await;
        return;
    }

    if let Some(limiter) = &ep.limiter {
        tokio::select! {
            _ = limiter.until_ready() => {}
            // Not started yet: give it back at once rather than wait.
            _ = shared.stop_claiming.cancelled() => {
                send(Done::Released { id: row.id, attempt: row.attempt, lease: row.lease, version: row.version }).await;
                return;
            }
        }
    }

    let attempt = tokio::select! {
        a = deliver::attempt(shared.http.route(&ep.cfg.name), &ep.cfg, &ep.headers, shared.ssrf.as_deref(), &row.event_id, row.payload) => a,
        _ = shared.abort_deliveries.cancelled() => {
            tracing::info!("shutdown deadline passed mid-request; the row goes back to pending");
            send(Done::Released { id: row.id, attempt: row.attempt, lease: row.lease, version: row.version }).await;
            return;
        }
    };

    ep.breaker.note(attempt.delivered(), attempt.started_at);
    let ms = attempt.elapsed.as_millis().min(i32::MAX as u128) as i32;
    shared.metrics.observe_attempt(&ep.cfg.name, &attempt);

    let (status, next_attempt_at, error, outcome) = if attempt.delivered() {
        tracing::debug!(status = attempt.status, ms, "delivered");
        ("delivered", None, None, "delivered")
    } else {
        let error = attempt.error.clone().unwrap_or_default();
        match retry::next_step(
            &ep.policy,
            row.attempt as u32,
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
    shared
        .metrics
        .attempts
        .get_or_create(&OutcomeLabels {
            endpoint: ep.cfg.name.clone(),
            outcome,
        })
        .inc();
    send(Done::Attempted(Completion {
        id: row.id,
        attempt: row.attempt,
        lease: row.lease,
        version: row.version,
        status,
        started_at: attempt.started_at,
        ms,
        response_status: attempt.status.map(i32::from),
        response_body: attempt.body,
        error,
        next_attempt_at,
    }))
    .await;
}
