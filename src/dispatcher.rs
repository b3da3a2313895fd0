//! One loop per endpoint: follows the partitions this relay owns
//! (src/queue/ownership.rs), reads their events from the log in commit order
//! (src/queue/reader.rs), keeps each key's events in order
//! (src/queue/keys.rs), sends each key's head under the endpoint's slots and
//! rate limit, hands outcomes to the write-back, and moves the partitions'
//! cursor; when nothing is new it arms the wake-up switch and waits for a
//! NOTIFY, the poll timer or shutdown (docs/wakeup.md).
//!
//! Endpoints never share a queue or a slot, so a slow endpoint only ever
//! holds up its own events; within an endpoint, a failing event holds up
//! only its own key.

mod reading;
pub mod send;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::breaker::Breaker;
use crate::config::{EndpointConfig, Ordering};
use crate::db::Db;
use crate::deliver;
use crate::metrics::{Metrics, ProbeLabels};
use crate::queue::cursor::Reads;
use crate::queue::keys::{Keys, Outcome, Queued, Then, KEY_CAP};
use crate::queue::ownership::{self, Owned};
use crate::queue::reader::{self, Event, Scope};
use crate::queue::ticks::Tick;
use crate::queue::writeback::{Unwritten, Write};
use crate::retry::RetryPolicy;
use send::Sent;

/// How often the cursor is written while it moves.
const CURSOR_EVERY: Duration = Duration::from_millis(100);
/// The cursor (and the counts in flight) are written at least this often.
const CURSOR_AT_LEAST: Duration = Duration::from_secs(1);
/// A retry is looked for this long after it is due, so its hold has committed.
const RETRY_SLACK: Duration = Duration::from_millis(20);
/// Most held heads or redeliveries taken by one look.
const DUE_BATCH: i64 = 100;
/// Wait after a failed statement before the next try.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

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
    /// Rung by the breaker when this relay is to send the endpoint's next probe.
    pub probe: Notify,
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
            probe: Notify::new(),
            cfg,
        }
    }

    fn ordered(&self) -> bool {
        self.cfg.ordering == Ordering::Key
    }
}

/// What every endpoint loop and delivery task shares.
pub struct Shared {
    pub db: Arc<Db>,
    pub http: crate::egress::Clients,
    /// The SSRF guard, when on.
    pub ssrf: Option<Arc<crate::ssrf::Guard>>,
    pub done: mpsc::Sender<Write>,
    pub metrics: Arc<Metrics>,
    pub relay_name: String,
    pub lease: Duration,
    pub claim_batch: u32,
    pub poll_interval: Duration,
    /// Delivery tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Stop reading and sending (graceful shutdown has begun).
    pub stop_claiming: CancellationToken,
    /// Give up on requests still in flight (the shutdown deadline passed).
    pub abort_deliveries: CancellationToken,
}

/// One endpoint's loop state.
struct Loop {
    shared: Arc<Shared>,
    ep: Arc<Endpoint>,
    keys: Keys<Event>,
    reads: Reads,
    reading: reading::Reading,
    /// Partitions held, by which taking of them.
    known: BTreeMap<i32, u64>,
    /// Partitions being given back (no longer read, their waiting events
    /// dropped), each with the cursor it goes back with: the newest tick up
    /// to which every event of it was settled when it stopped being read. It
    /// goes back once nothing of it is in flight or on its way to the
    /// database, so its new owner never reads an event whose outcome this
    /// relay has not written yet.
    giving_back: BTreeMap<i32, Tick>,
    owned: Owned,
    to_park: Vec<Event>,
    park_at: Instant,
    fetches: Vec<(String, i64)>,
    fetch_at: Instant,
    holds_at: Instant,
    redeliveries_at: Instant,
    cursor_at: Instant,
    cursor_written_at: Instant,
    /// The newest settled tick, and whether it is written.
    cursor: Option<(Tick, bool)>,
    in_flight: usize,
    back: mpsc::UnboundedSender<Sent>,
    /// Outcomes of held heads, parked events and redeliveries not yet written.
    unwritten: Unwritten,
    /// The last disarm of the wake-up switch, sent without waiting for it.
    disarming: Option<tokio::task::JoinHandle<()>>,
}

/// The loop for one endpoint; returns once `stop_claiming` is cancelled and
/// everything it had in flight is written back.
pub async fn run_endpoint(
    shared: Arc<Shared>,
    ep: Arc<Endpoint>,
    mut wake: watch::Receiver<u64>,
    mut owned: watch::Receiver<Owned>,
) {
    let (back, mut sent_rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let mut l = Loop {
        reading: reading::Reading::new(shared.poll_interval),
        shared,
        ep,
        keys: Keys::default(),
        reads: Reads::default(),
        known: BTreeMap::new(),
        giving_back: BTreeMap::new(),
        owned: Owned::default(),
        to_park: Vec::new(),
        park_at: now,
        fetches: Vec::new(),
        fetch_at: now,
        holds_at: now,
        redeliveries_at: now,
        cursor_at: now,
        cursor_written_at: now,
        cursor: None,
        in_flight: 0,
        back,
        unwritten: Unwritten::default(),
        disarming: None,
    };
    let stop = l.shared.stop_claiming.clone();
    let mut paused = l.ep.breaker.paused();
    loop {
        let is_paused = *paused.borrow_and_update();
        if owned.has_changed().unwrap_or(false) {
            let o = owned.borrow_and_update().clone();
            l.apply_ownership(o).await;
        }
        l.park_and_fetch().await;
        // New rows first: a wake-up is most often a writer's commit.
        l.read_step(is_paused).await;
        // A read may have found the endpoint paused.
        let is_paused = *paused.borrow_and_update();
        if !is_paused {
            l.dispatch(false);
            l.poll_due().await;
            l.dispatch(false);
        }
        l.move_cursor().await;
        l.give_back_idle().await;

        let next = l.next_wake(is_paused);
        tokio::select! {
            Some(sent) = sent_rx.recv() => {
                l.handle(sent).await;
                while let Ok(sent) = sent_rx.try_recv() {
                    l.handle(sent).await;
                }
            }
            _ = tokio::time::sleep_until(next) => {}
            r = wake.changed(), if l.reading.listens() => {
                if r.is_ok() {
                    l.woken();
                }
            }
            r = owned.changed() => {
                if r.is_ok() {
                    let o = owned.borrow_and_update().clone();
                    l.apply_ownership(o).await;
                }
            }
            _ = paused.changed() => {}
            _ = l.ep.probe.notified() => l.probe().await,
            _ = stop.cancelled() => break,
        }
    }
    // Partitions taken while shutdown began may not have reached the loop.
    let latest = owned.borrow().clone();
    l.shut_down(&mut sent_rx, &latest).await;
}

impl Loop {
    fn scope<'a>(&self, parts: &'a [i32]) -> Scope<'a> {
        Scope {
            endpoint: self.ep.id,
            mask: self.owned.partitions - 1,
            parts,
            ordered: self.ep.ordered(),
        }
    }

    /// Partitions whose events this relay may send now.
    fn lease_ok(&self) -> bool {
        let margin = self.ep.cfg.timeout + Duration::from_secs(1);
        self.owned
            .lease_until
            .is_some_and(|until| Instant::now() + margin < until)
    }

    fn woken(&mut self) {
        let now = Instant::now();
        self.reading.woken();
        self.holds_at = now;
        self.redeliveries_at = now;
    }

    fn next_wake(&self, paused: bool) -> Instant {
        let mut next = self
            .cursor_at
            .max(Instant::now() + Duration::from_millis(1));
        if let Some(at) = self
            .reading
            .next_read(self.keys.in_memory(), self.keys.ready_len())
        {
            next = next.min(at);
        }
        if !paused {
            next = next.min(self.holds_at).min(self.redeliveries_at);
        }
        if !self.to_park.is_empty() {
            next = next.min(self.park_at);
        }
        if !self.fetches.is_empty() {
            next = next.min(self.fetch_at);
        }
        next.max(Instant::now())
    }

    /// Follows the partitions the ownership task says this relay holds.
    async fn apply_ownership(&mut self, o: Owned) {
        let lost: Vec<i32> = self
            .known
            .iter()
            .filter(|(p, taken)| o.parts.get(p).map(|h| h.taken) != Some(**taken))
            .map(|(p, _)| *p)
            .collect();
        for p in lost {
            tracing::info!(endpoint = %self.ep.cfg.name, partition = p, "partition no longer owned");
            self.lose(p);
        }
        self.owned = o;
        let fresh: Vec<(i32, Tick)> = self
            .owned
            .parts
            .iter()
            .filter(|(p, _)| !self.known.contains_key(p))
            .map(|(p, h)| (*p, h.tick.clone()))
            .collect();
        if !fresh.is_empty() {
            let parts: Vec<i32> = fresh.iter().map(|(p, _)| *p).collect();
            self.load_holds(&parts).await;
            self.reading.catch_up(fresh);
        }
        self.known = self
            .owned
            .parts
            .iter()
            .map(|(p, h)| (*p, h.taken))
            .collect();
        self.giving_back.retain(|p, _| self.known.contains_key(p));
        // Over the share (another relay has come): give the highest back.
        let keep = self.owned.share.max(1);
        let active: Vec<i32> = self
            .known
            .keys()
            .copied()
            .filter(|p| !self.giving_back.contains_key(p))
            .collect();
        if active.len() > keep {
            // Every read up to this tick is settled, this partition's events
            // included; without one, the cursor it was taken with.
            let settled = self
                .reads
                .advance()
                .or_else(|| self.cursor.as_ref().map(|(t, _)| t.clone()));
            if let Some(t) = &settled {
                self.cursor = Some((t.clone(), false));
            }
            for p in &active[keep..] {
                let Some(tick) = settled
                    .clone()
                    .or_else(|| self.owned.parts.get(p).map(|h| h.tick.clone()))
                else {
                    continue;
                };
                self.giving_back.insert(*p, tick);
                self.reading.stop_reading(*p);
                self.drop_waiting(*p);
            }
        }
    }

    /// Held keys and keys with parked events of newly taken partitions.
    async fn load_holds(&mut self, parts: &[i32]) {
        let mut backoff = ERROR_PAUSE;
        let loaded = loop {
            let r = async {
                let conn = self.shared.db.conn().await?;
                reader::holds_load(&conn, &self.scope(parts)).await
            }
            .await;
            match r {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "loading held keys failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if self.shared.stop_claiming.is_cancelled() {
                        return;
                    }
                }
            }
        };
        for (key, held_by, part) in loaded {
            match held_by {
                Some(id) => self.keys.load_held(&key, id, part),
                None => {
                    if let Then::FetchParked { key, after } = self.keys.load_parked(&key, part) {
                        self.fetches.push((key, after));
                    }
                }
            }
        }
        self.holds_at = Instant::now();
    }

    /// The partition's waiting events leave memory: their rows are read
    /// again by its next owner, from the cursor it gets.
    fn drop_waiting(&mut self, p: i32) {
        for ev in self.keys.drop_partition(p) {
            ev.token.settle();
        }
        let (gone, kept): (Vec<Event>, Vec<Event>) = std::mem::take(&mut self.to_park)
            .into_iter()
            .partition(|e| e.partition == p);
        self.to_park = kept;
        for ev in gone {
            ev.token.settle();
        }
    }

    /// The partition is gone: its waiting events leave memory (their rows
    /// are the new owner's now).
    fn lose(&mut self, p: i32) {
        self.drop_waiting(p);
        self.reading.forget(p);
        self.giving_back.remove(&p);
        self.known.remove(&p);
    }

    /// Parks what waits behind held keys, and fetches parked events of keys
    /// that moved on.
    async fn park_and_fetch(&mut self) {
        let now = Instant::now();
        if !self.to_park.is_empty() && now >= self.park_at {
            let r = async {
                let conn = self.shared.db.conn().await?;
                reader::park(&conn, self.ep.id, &self.to_park).await
            }
            .await;
            match r {
                Ok(()) => {
                    let mut per_key: BTreeMap<String, u32> = BTreeMap::new();
                    for ev in self.to_park.drain(..) {
                        if let Some(k) = &ev.key {
                            *per_key.entry(k.clone()).or_default() += 1;
                        }
                        ev.token.settle();
                    }
                    for (k, n) in per_key {
                        let t = self.keys.parking_done(&k, n);
                        self.then(t);
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "parking events failed; will retry");
                    self.park_at = now + ERROR_PAUSE;
                }
            }
        }
        if !self.fetches.is_empty() && now >= self.fetch_at {
            let asked = std::mem::take(&mut self.fetches);
            let parts: Vec<i32> = self.known.keys().copied().collect();
            let on_their_way = self.unwritten.ids();
            let r = async {
                let conn = self.shared.db.conn().await?;
                reader::parked_fetch(&conn, &self.scope(&parts), &asked, KEY_CAP as i64).await
            }
            .await;
            match r {
                Ok(rows) => {
                    let mut by_key: BTreeMap<String, Vec<Event>> = BTreeMap::new();
                    for ev in rows {
                        by_key
                            .entry(ev.key.clone().unwrap_or_default())
                            .or_default()
                            .push(ev);
                    }
                    for (key, _) in asked {
                        let mut rows = by_key.remove(&key).unwrap_or_default();
                        // Sent already, its outcome not yet written: past it.
                        rows.retain(|ev| {
                            !on_their_way.contains(&ev.id) && !self.unwritten.contains(ev.id)
                        });
                        let t = self.keys.parked_fetched(&key, rows, KEY_CAP);
                        self.then(t);
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "fetching parked events failed; will retry");
                    for (key, _) in asked {
                        let t = self.keys.fetch_failed(&key);
                        self.then(t);
                    }
                    self.fetch_at = now + ERROR_PAUSE;
                }
            }
        }
    }

    fn then(&mut self, t: Then<Event>) {
        match t {
            Then::Nothing => {}
            Then::Park(evs) => self.to_park.extend(evs),
            Then::FetchParked { key, after } => self.fetches.push((key, after)),
        }
    }

    /// Held heads whose retry is due, and redeliveries.
    async fn poll_due(&mut self) {
        let now = Instant::now();
        let parts: Vec<i32> = self.known.keys().copied().collect();
        if parts.is_empty() {
            return;
        }
        if now >= self.holds_at {
            self.holds_at = now + self.shared.poll_interval;
            let in_flight = self.keys.held_in_flight();
            let on_their_way = self.unwritten.ids();
            let r = async {
                let conn = self.shared.db.conn().await?;
                reader::holds_due(&conn, &self.scope(&parts), &in_flight, DUE_BATCH, false).await
            }
            .await;
            match r {
                Ok(heads) => {
                    if heads.len() as i64 == DUE_BATCH {
                        self.holds_at = now;
                    }
                    for ev in heads {
                        if !on_their_way.contains(&ev.id) && !self.unwritten.contains(ev.id) {
                            self.keys.ready_held(ev);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "reading due retries failed; will retry");
                }
            }
        }
        if now >= self.redeliveries_at {
            self.redeliveries_at = now + self.shared.poll_interval;
            let in_flight = self.keys.loose_in_flight();
            let on_their_way = self.unwritten.ids();
            let r = async {
                let conn = self.shared.db.conn().await?;
                reader::redeliveries_due(&conn, &self.scope(&parts), &in_flight, DUE_BATCH).await
            }
            .await;
            match r {
                Ok(evs) => {
                    if evs.len() as i64 == DUE_BATCH {
                        self.redeliveries_at = now;
                    }
                    for ev in evs {
                        if !on_their_way.contains(&ev.id) && !self.unwritten.contains(ev.id) {
                            self.keys.push_loose(ev);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "reading redeliveries failed; will retry");
                }
            }
        }
    }

    /// Sends what is ready, while slots are free and the leases allow.
    fn dispatch(&mut self, probe: bool) {
        while self.lease_ok() || probe {
            let Ok(permit) = self.ep.slots.clone().try_acquire_owned() else {
                break;
            };
            let Some(ev) = self.keys.next_ready() else {
                break;
            };
            self.in_flight += 1;
            let span = tracing::info_span!("deliver", event_id = %ev.event_id, endpoint = %self.ep.cfg.name, attempt = ev.attempts + 1);
            self.shared.tracker.spawn(
                send::send(
                    self.shared.clone(),
                    self.ep.clone(),
                    ev,
                    permit,
                    probe,
                    self.back.clone(),
                )
                .instrument(span),
            );
            if probe {
                break;
            }
        }
    }

    /// This relay's turn to probe the paused endpoint: the oldest head it
    /// has, or a held head.
    async fn probe(&mut self) {
        if !self.keys.has_ready() {
            let parts: Vec<i32> = self.known.keys().copied().collect();
            if parts.is_empty() {
                return;
            }
            let in_flight = self.keys.held_in_flight();
            let on_their_way = self.unwritten.ids();
            let r = async {
                let conn = self.shared.db.conn().await?;
                reader::holds_due(&conn, &self.scope(&parts), &in_flight, 1, true).await
            }
            .await;
            if let Ok(heads) = r {
                for ev in heads {
                    if !on_their_way.contains(&ev.id) && !self.unwritten.contains(ev.id) {
                        self.keys.ready_held(ev);
                    }
                }
            }
        }
        self.dispatch(true);
    }

    /// An attempt came back.
    async fn handle(&mut self, sent: Sent) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Sent { ev, probe, result } = sent;
        let (c, delivered) = match result {
            send::Result::Abandoned => {
                self.shared.metrics.abandoned.inc();
                return;
            }
            send::Result::Attempted { c, delivered } => (c, delivered),
        };
        if probe {
            self.shared
                .metrics
                .probes
                .get_or_create(&ProbeLabels {
                    endpoint: self.ep.cfg.name.clone(),
                    outcome: if delivered { "delivered" } else { "failed" },
                })
                .inc();
        }
        if probe && !delivered {
            let w = Write::ProbeFailed {
                id: c.id,
                attempt: c.attempt,
                started_at: c.started_at,
                ms: c.ms,
                response_status: c.response_status,
                response_body: c.response_body,
                error: c.error,
            };
            self.keys.probe_failed(ev);
            let _ = self.shared.done.send(w).await;
            return;
        }
        let retry = c.status == "pending";
        if let Some(at) = c.next_attempt_at {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            let due = Instant::now() + wait + RETRY_SLACK;
            if ev.key().is_some() {
                self.holds_at = self.holds_at.min(due);
            } else {
                self.redeliveries_at = self.redeliveries_at.min(due);
            }
        }
        let loose = ev.key().is_none();
        let pending = self.unwritten.add(ev.id, ev.partition);
        let t = match ev.key() {
            Some(k) => {
                let outcome = if retry {
                    Outcome::Retry
                } else {
                    Outcome::Settled
                };
                self.keys.finished(k, ev.id, ev.partition, outcome)
            }
            None => {
                self.keys.finished_loose(ev.id, ev.partition);
                Then::Nothing
            }
        };
        self.then(t);
        let w = Write::Outcome {
            c,
            key: ev.key.clone(),
            source: ev.source.name(),
            loose,
            probe,
            token: ev.token,
            pending,
        };
        let _ = self.shared.done.send(w).await;
        if probe && delivered {
            self.resume_after_probe().await;
        }
    }

    async fn resume_after_probe(&self) {
        let r = async {
            let conn = self.shared.db.conn().await?;
            let r = conn
                .query_one(&conn.st.resume_after_probe, &[&self.ep.id])
                .await;
            self.shared.db.report(&r);
            Ok::<bool, anyhow::Error>(r?.get(0))
        }
        .await;
        match r {
            Ok(true) => {
                tracing::debug!(endpoint = %self.ep.cfg.name, "probe delivered: resuming the endpoint")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "resuming after a probe failed; the next report retries")
            }
        }
    }

    /// Moves the cursor when reads have settled (at most every
    /// CURSOR_EVERY), with the counts in flight.
    async fn move_cursor(&mut self) {
        let now = Instant::now();
        if now < self.cursor_at {
            return;
        }
        self.cursor_at = now + CURSOR_EVERY;
        if let Some(t) = self.reads.advance() {
            self.cursor = Some((t, false));
        }
        let due = now >= self.cursor_written_at + CURSOR_AT_LEAST;
        let Some((tick, written)) = &self.cursor else {
            return;
        };
        if *written && !due {
            return;
        }
        let tick = tick.clone();
        if self.write_cursor(&tick).await.is_ok() {
            self.cursor = Some((tick, true));
            self.cursor_written_at = now;
        }
    }

    async fn write_cursor(&self, tick: &Tick) -> anyhow::Result<()> {
        let parts: Vec<i32> = self
            .known
            .keys()
            .copied()
            .filter(|p| !self.giving_back.contains_key(p))
            .collect();
        if parts.is_empty() {
            return Ok(());
        }
        let counts = self.keys.in_flight_by_partition();
        let n: Vec<i32> = parts
            .iter()
            .map(|p| counts.get(p).copied().unwrap_or(0) as i32)
            .collect();
        let r = async {
            let conn = self.shared.db.conn().await?;
            reader::write_cursor(&conn, self.ep.id, tick, &parts, &n, &self.shared.relay_name).await
        }
        .await;
        if let Err(e) = &r {
            tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "moving the cursor failed; will retry");
        }
        r
    }

    /// Gives back partitions over the share once nothing of theirs is in
    /// flight or on its way to the database.
    async fn give_back_idle(&mut self) {
        let counts = self.keys.in_flight_by_partition();
        let mut idle: BTreeMap<String, (Tick, Vec<i32>)> = BTreeMap::new();
        for (p, tick) in &self.giving_back {
            if counts.contains_key(p) || self.unwritten.any_in(*p) || self.reading.catching_up(*p) {
                continue;
            }
            idle.entry(tick.text().to_string())
                .or_insert_with(|| (tick.clone(), Vec::new()))
                .1
                .push(*p);
        }
        for (_, (tick, parts)) in idle {
            match ownership::give_back(
                &self.shared.db,
                self.ep.id,
                &self.shared.relay_name,
                &parts,
                Some(&tick),
            )
            .await
            {
                Ok(()) => {
                    for p in parts {
                        tracing::info!(endpoint = %self.ep.cfg.name, partition = p, "partition given back");
                        self.lose(p);
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "giving partitions back failed; will retry")
                }
            }
        }
    }

    /// Graceful shutdown: nothing new is read or sent; what is in flight
    /// finishes (or is abandoned at the deadline) and is written back; the
    /// cursor is written and the partitions go back, so another relay takes
    /// them at once.
    async fn shut_down(&mut self, sent_rx: &mut mpsc::UnboundedReceiver<Sent>, latest: &Owned) {
        while self.in_flight > 0 {
            match sent_rx.recv().await {
                Some(sent) => self.handle(sent).await,
                None => break,
            }
        }
        for _ in 0..3 {
            if self.to_park.is_empty() {
                break;
            }
            self.park_at = Instant::now();
            self.park_and_fetch().await;
        }
        // Waiting events were never sent: the cursor stays before them.
        let parts: Vec<i32> = self.known.keys().copied().collect();
        for p in &parts {
            drop(self.keys.drop_partition(*p));
        }
        self.reading.abandon();
        let deadline = Instant::now() + crate::relay::FINAL_WRITE_GRACE;
        while !self.reads.settled_or_stuck() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(t) = self.reads.advance() {
            self.cursor = Some((t, false));
        }
        let tick = self.cursor.as_ref().map(|(t, _)| t.clone());
        // Taken by the ownership task but never read here (the stop came
        // first): back with their cursors as they were, or the next relay
        // would wait a whole lease for them.
        let unseen: Vec<i32> = latest
            .parts
            .keys()
            .copied()
            .filter(|p| !parts.contains(p))
            .collect();
        for (parts, tick) in [(parts, tick.as_ref()), (unseen, None)] {
            if parts.is_empty() {
                continue;
            }
            let r = ownership::give_back(
                &self.shared.db,
                self.ep.id,
                &self.shared.relay_name,
                &parts,
                tick,
            )
            .await;
            if let Err(e) = r {
                tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "giving partitions back at shutdown failed; their leases expire");
            }
        }
    }
}
