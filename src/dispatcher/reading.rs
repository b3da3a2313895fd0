//! The endpoint loop's reading of the log: catch-up reads of newly taken
//! partitions from their cursor, then regular reads from tick to tick; a big
//! tick by its ids and then a page at a time; the read-ahead budget; and the
//! wake-up switch when nothing is new (docs/wakeup.md).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Loop;
use crate::queue::cursor::{Read, Reads};
use crate::queue::keys::{Pushed, Queued as _};
use crate::queue::reader::{self, Row, Source};
use crate::queue::ticks::Tick;

/// Rows per read.
const PAGE: i64 = 500;
/// Most ids of a big tick held at once (8 MB): each page is one scan and
/// sort of the whole tick (0.7 s of the database for a million rows, 0.58 s
/// for a page of 100,000), so pages are large.
const IDS_PAGE: i64 = 1_000_000;
/// Most events in memory (waiting or in flight): reading waits until a
/// whole page fits, so a full budget is topped up a page at a time rather
/// than by a statement for every few events sent.
pub const BUDGET: usize = 10_000;
/// Reading also waits while this many events could be sent already: an
/// endpoint that sends slowly (a receiver that takes seconds, few slots)
/// then holds two pages ready, not its whole budget, and its reads do not
/// take the database and the relay's shared connections from the other
/// endpoints for events it will not send for a long while. A key's events
/// behind its head are not ready, so one busy key still reads ahead to the
/// budget.
const READY_AHEAD: usize = 2 * PAGE as usize;
/// Pause after a read that found fewer rows than a page: the loop has caught
/// up with the writers, and reading again at once would mostly fetch one row
/// per statement.
const CAUGHT_UP_PAUSE: Duration = Duration::from_millis(1);
/// While events read earlier are still being sent, an empty read is followed
/// by a longer pause each time, up to this: the loop is busy, its switch stays
/// off (writers send no NOTIFY), and new rows are found within this long.
const BUSY_MAX_PAUSE: Duration = Duration::from_millis(8);
/// How long the loop goes on reading after its last rows before it arms its
/// switch, the pause between empty reads doubling from 1 ms up to
/// [`BUSY_MAX_PAUSE`]. Each arming and disarming is an update of the
/// endpoint's row; under a trickle with gaps of a few milliseconds a shorter
/// linger (three reads 1 ms apart) turned the switch about six times a
/// second, and while any long transaction or snapshot holds back the
/// horizon those versions cannot be pruned, so every look at the row (each
/// read, each writer's routing) walked more of them as it went on
/// (docs/wakeup.md).
const LINGER: Duration = Duration::from_millis(50);
/// Longest pause between two checks in the first moments of waiting for
/// writers that were in progress when the switch was armed.
const SETTLE_MAX_DELAY: Duration = Duration::from_millis(50);
/// After that, checks are spaced by this fraction of the time waited so far
/// (up to a poll interval): a late writer's rows wait after its commit at
/// most a twentieth of the time it stayed open, and a transaction open for
/// minutes costs each idle loop about one check and read a second, not
/// twenty (docs/wakeup.md).
const SETTLE_SHARE: u32 = 20;

/// The pause before the next settle check, after `delay`, having waited
/// `waited` since arming.
fn settle_delay(delay: Duration, waited: Duration, poll: Duration) -> Duration {
    (delay * 2).min(SETTLE_MAX_DELAY.max(waited / SETTLE_SHARE).min(poll))
}

/// One read of the log between two ticks, possibly over several statements.
struct Job {
    prev: Tick,
    /// The tick read to: set by the first statement (or the tick the other
    /// partitions are at, for a catch-up).
    cur: Option<Tick>,
    parts: Vec<i32>,
    read: Option<Arc<Read>>,
    after: i64,
    /// A big tick's ids still to read, and whether more follow them.
    ids: Option<(VecDeque<i64>, bool)>,
    catch_up: bool,
    found: usize,
}

impl Job {
    /// A big tick's next ids, listed: they are read from now on, after the
    /// last of them the next list begins. True when nothing is left.
    fn listed(&mut self, ids: Vec<i64>, more: bool) -> bool {
        if let Some(last) = ids.last() {
            self.after = *last;
        }
        let done = ids.is_empty() && !more;
        self.ids = Some((ids.into(), more));
        done
    }
}

enum Wakeup {
    /// Rows were found last time: the switch is (being) disarmed.
    Busy,
    /// Nothing new since this moment, but rows came moments ago: look
    /// again shortly before paying for the switch.
    Lingering(Instant),
    /// Armed, waiting for writers that were in progress at arming to end.
    Settling {
        snapshot: String,
        delay: Duration,
        /// When the switch was armed.
        since: Instant,
    },
    /// Armed and settled: a NOTIFY comes for new rows.
    Armed,
}

/// Where reading stands.
pub struct Reading {
    /// The tick the regular reads are at.
    prev: Option<Tick>,
    /// Partitions in the regular reads (their catch-up is done).
    parts: BTreeSet<i32>,
    jobs: VecDeque<Job>,
    wakeup: Wakeup,
    read_at: Option<Instant>,
    /// When the last statement of a read began.
    began: Instant,
    poll_interval: Duration,
    /// The pause after an empty read while events are still being sent.
    busy_pause: Duration,
    /// The switch may be on without this loop having armed it (it is on
    /// when an endpoint is made, and a relay before this one may have left
    /// it on): the first read that finds rows turns it off.
    maybe_armed: bool,
}

impl Reading {
    pub fn new(poll_interval: Duration) -> Reading {
        Reading {
            prev: None,
            parts: BTreeSet::new(),
            jobs: VecDeque::new(),
            wakeup: Wakeup::Busy,
            read_at: Some(Instant::now()),
            began: Instant::now(),
            poll_interval,
            busy_pause: CAUGHT_UP_PAUSE,
            maybe_armed: true,
        }
    }

    /// Newly taken partitions: read each from its cursor up to where the
    /// others are, then with them.
    pub fn catch_up(&mut self, fresh: Vec<(i32, Tick)>) {
        let mut by_tick: BTreeMap<String, (Tick, Vec<i32>)> = BTreeMap::new();
        for (p, t) in fresh {
            by_tick
                .entry(t.text().to_string())
                .or_insert_with(|| (t, Vec::new()))
                .1
                .push(p);
        }
        for (_, (prev, parts)) in by_tick {
            self.jobs.push_back(Job {
                prev,
                cur: None,
                parts,
                read: None,
                after: 0,
                ids: None,
                catch_up: true,
                found: 0,
            });
        }
    }

    /// The partition is read no more (being given back).
    pub fn stop_reading(&mut self, p: i32) {
        self.parts.remove(&p);
        for j in &mut self.jobs {
            j.parts.retain(|q| *q != p);
        }
    }

    /// The partition is gone.
    pub fn forget(&mut self, p: i32) {
        self.stop_reading(p);
    }

    pub fn catching_up(&self, p: i32) -> bool {
        self.jobs.iter().any(|j| j.catch_up && j.parts.contains(&p))
    }

    /// Shutdown: reads in progress stop where they are, unfinished, so the
    /// cursor stays before them (what they had still to read is read again
    /// from there by the next owner).
    pub fn abandon(&mut self) {
        for j in self.jobs.drain(..) {
            if let Some(r) = &j.read {
                Reads::abandon(r);
            }
        }
    }

    /// Whether a NOTIFY should wake the loop.
    pub fn listens(&self) -> bool {
        true
    }

    pub fn woken(&mut self) {
        self.read_at = Some(Instant::now());
    }

    /// Whether there is room to read: a page fits in the budget and fewer
    /// than [`READY_AHEAD`] events could be sent already.
    fn room(in_memory: usize, ready: usize) -> bool {
        in_memory + PAGE as usize <= BUDGET && ready < READY_AHEAD
    }

    /// When the next read is due, given the events in memory and ready.
    pub fn next_read(&self, in_memory: usize, ready: usize) -> Option<Instant> {
        if !Self::room(in_memory, ready) {
            return None;
        }
        if !self.jobs.is_empty() {
            return Some(Instant::now());
        }
        self.read_at
    }
}

impl Loop {
    /// One statement's worth of reading, when one is due.
    pub(super) async fn read_step(&mut self, _paused: bool) {
        if !Reading::room(self.keys.in_memory(), self.keys.ready_len()) {
            return;
        }
        let room = BUDGET.saturating_sub(self.keys.in_memory()) as i64;
        if self.reading.jobs.is_empty() {
            let due = self.reading.read_at.is_some_and(|at| at <= Instant::now());
            let Some(prev) = self.reading.prev.clone() else {
                return;
            };
            if !due || self.reading.parts.is_empty() {
                return;
            }
            self.reading.jobs.push_back(Job {
                prev,
                cur: None,
                parts: self.reading.parts.iter().copied().collect(),
                read: None,
                after: 0,
                ids: None,
                catch_up: false,
                found: 0,
            });
        }
        let Some(mut job) = self.reading.jobs.pop_front() else {
            return;
        };
        if job.parts.is_empty() {
            if let Some(r) = &job.read {
                Reads::seal(r);
            }
            return;
        }
        if job.catch_up && job.cur.is_none() {
            job.cur = self.reading.prev.clone();
        }
        self.reading.began = Instant::now();
        match self.read_job(&mut job, room.min(PAGE)).await {
            Ok(true) => self.job_done(job).await,
            Ok(false) => self.reading.jobs.push_front(job),
            Err(e) => {
                tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "reading the log failed; will retry");
                self.reading.jobs.push_front(job);
                self.reading.read_at = Some(Instant::now() + super::ERROR_PAUSE);
                tokio::time::sleep(super::ERROR_PAUSE).await;
            }
        }
    }

    /// Runs one statement of `job`; true when the job has read everything.
    async fn read_job(&mut self, job: &mut Job, limit: i64) -> anyhow::Result<bool> {
        let conn = self.shared.db.conn().await?;
        let scope = self.scope(&job.parts);
        if let Some((ids, more)) = &mut job.ids {
            // Taken off the list only once read: a failed page is tried again.
            let n = ids.len().min(limit as usize);
            let page: Vec<i64> = ids.iter().take(n).copied().collect();
            let rows = reader::read_rows(&conn, &scope, &page).await?;
            ids.drain(..n);
            let read = job.read.clone().expect("a big tick's read has begun");
            job.found += rows.len();
            self.push_rows(rows, &read);
            if !ids.is_empty() {
                return Ok(false);
            }
            if !*more {
                return Ok(true);
            }
            let cur = job.cur.clone().expect("a big tick has its tick");
            let (next, more) =
                reader::read_ids(&conn, &scope, &job.prev, &cur, job.after, IDS_PAGE).await?;
            return Ok(job.listed(next, more));
        }
        if job.catch_up && job.read.is_none() {
            // A catch-up may span a long way (a relay that starts on a
            // backlog of a million rows): its ids first, which is the one
            // walk of its range that a big tick needs anyway, instead of a
            // page of rows that walks the whole range too (0.95 s of the
            // database for a million).
            let cur = match job.cur.clone() {
                Some(t) => t,
                None => {
                    let r = conn.query_one(&conn.st.snapshot, &[]).await;
                    self.shared.db.report(&r);
                    Tick::parse(r?.get::<_, &str>(0)).map_err(anyhow::Error::msg)?
                }
            };
            job.cur = Some(cur.clone());
            job.read = Some(self.reads.begin(cur.clone()));
            let (ids, more) = reader::read_ids(&conn, &scope, &job.prev, &cur, 0, IDS_PAGE).await?;
            return Ok(job.listed(ids, more));
        }
        let reader::Page { tick, rows, paused } =
            reader::read(&conn, &scope, &job.prev, job.cur.as_ref(), job.after, limit).await?;
        self.ep.breaker.seen_paused(paused);
        if job.cur.is_none() {
            job.cur = Some(tick.clone());
        }
        let read = job
            .read
            .get_or_insert_with(|| self.reads.begin(tick))
            .clone();
        let full = rows.len() as i64 == limit;
        if let Some(last) = rows.last() {
            job.after = last.id;
        }
        job.found += rows.len();
        self.push_rows(rows, &read);
        if !full {
            return Ok(true);
        }
        // A big tick: its remaining ids once, then its rows a page at a time.
        let cur = job.cur.clone().expect("set above");
        let (ids, more) =
            reader::read_ids(&conn, &scope, &job.prev, &cur, job.after, IDS_PAGE).await?;
        Ok(job.listed(ids, more))
    }

    fn push_rows(&mut self, rows: Vec<Row>, read: &Arc<Read>) {
        let scope_ordered = self.ep.ordered();
        for row in rows {
            let token = Reads::token(read);
            // A page by ids may still hold rows of a partition given back.
            if self.giving_back.contains_key(&row.partition)
                || !self.known.contains_key(&row.partition)
            {
                token.settle();
                continue;
            }
            let scope = crate::queue::reader::Scope {
                endpoint: self.ep.id,
                mask: self.owned.partitions - 1,
                parts: &[],
                ordered: scope_ordered,
            };
            let ev = row.into_event(&scope, Source::Log, 0, token);
            match self.keys.push_read(ev) {
                Pushed::Queued => {}
                Pushed::Park(ev) => self.to_park.push(ev),
                Pushed::Skip(ev) => {
                    debug_assert!(ev.key().is_some());
                    ev.token.settle();
                }
            }
        }
    }

    async fn job_done(&mut self, job: Job) {
        if let Some(r) = &job.read {
            Reads::seal(r);
        }
        if job.catch_up {
            if self.reading.prev.is_none() {
                self.reading.prev = job.cur.clone();
            }
            self.reading.parts.extend(job.parts.iter().copied());
            self.reading.read_at = Some(Instant::now());
            if job.found == 0 {
                return;
            }
        } else {
            self.reading.prev = job.cur.clone();
        }
        let now = Instant::now();
        if job.found > 0 {
            if self.reading.maybe_armed
                || !matches!(self.reading.wakeup, Wakeup::Busy | Wakeup::Lingering(_))
            {
                self.disarm();
                self.reading.maybe_armed = false;
            }
            self.reading.wakeup = Wakeup::Busy;
            self.reading.busy_pause = CAUGHT_UP_PAUSE;
            // Reads that find rows follow each other at this cadence, however
            // long each took (the timer's resolution is a millisecond).
            self.reading.read_at = Some(self.reading.began + CAUGHT_UP_PAUSE);
            return;
        }
        if self.keys.in_memory() > 0 && matches!(self.reading.wakeup, Wakeup::Busy) {
            // Still sending what was read: busy, not idle.
            self.reading.busy_pause = (self.reading.busy_pause * 2).min(BUSY_MAX_PAUSE);
            self.reading.read_at = Some(now + self.reading.busy_pause);
            return;
        }
        let poll = self.reading.poll_interval;
        let state = std::mem::replace(&mut self.reading.wakeup, Wakeup::Busy);
        let was_settling = matches!(state, Wakeup::Settling { .. });
        self.reading.wakeup = match state {
            Wakeup::Busy => {
                self.reading.busy_pause = CAUGHT_UP_PAUSE;
                Wakeup::Lingering(now)
            }
            Wakeup::Lingering(since) if now < since + LINGER => {
                self.reading.busy_pause = (self.reading.busy_pause * 2).min(BUSY_MAX_PAUSE);
                Wakeup::Lingering(since)
            }
            Wakeup::Lingering(_) => match self.arm().await {
                Ok(snapshot) => Wakeup::Settling {
                    snapshot,
                    delay: Duration::from_millis(1),
                    since: now,
                },
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.cfg.name, error = %format!("{e:#}"), "arming the wake-up failed; polling");
                    Wakeup::Busy
                }
            },
            Wakeup::Settling {
                snapshot,
                delay,
                since,
            } => match self.settled(&snapshot).await {
                Ok(true) => Wakeup::Armed,
                // Waiting goes on for as long as those writers are open, on
                // a cadence that slows as they stay open (settle_delay): one
                // of them may have read the switch off (a bulk write begun
                // during the linger), and its rows would otherwise wait for
                // the poll timer after it commits. Only a check that keeps
                // failing gives up, after a poll interval.
                Err(_) if now >= since + poll => Wakeup::Armed,
                _ => Wakeup::Settling {
                    snapshot,
                    delay: settle_delay(delay, now - since, poll),
                    since,
                },
            },
            Wakeup::Armed => {
                // Another relay may have disarmed the switch while busy.
                let _ = self.arm_only().await;
                Wakeup::Armed
            }
        };
        self.reading.read_at = Some(match &self.reading.wakeup {
            Wakeup::Busy => now + CAUGHT_UP_PAUSE,
            Wakeup::Lingering(_) => now + self.reading.busy_pause,
            Wakeup::Settling { delay, .. } => now + *delay,
            // Settled after this read: the writers it waited for may have
            // committed since, so read once more before relying on NOTIFY.
            Wakeup::Armed if was_settling => now,
            Wakeup::Armed => now + poll,
        });
    }

    /// Arms the switch, then (after that has committed) takes the snapshot of
    /// transactions still in progress.
    async fn arm(&mut self) -> anyhow::Result<String> {
        self.arm_only().await?;
        let conn = self.shared.db.conn().await?;
        let r = conn.query_one(&conn.st.snapshot, &[]).await;
        self.shared.db.report(&r);
        Ok(r?.get(0))
    }

    async fn arm_only(&mut self) -> anyhow::Result<()> {
        // A disarm still on its way must land first, or it would turn off
        // the switch this loop is about to rely on.
        if let Some(disarming) = self.disarming.take() {
            let _ = disarming.await;
        }
        let conn = self.shared.db.conn().await?;
        let r = conn.execute(&conn.st.arm, &[&self.ep.id]).await;
        self.shared.db.report(&r);
        r?;
        Ok(())
    }

    /// Whether every writer in progress at arming has ended.
    async fn settled(&self, snapshot: &str) -> anyhow::Result<bool> {
        let conn = self.shared.db.conn().await?;
        let r = conn.query_one(&conn.st.settled, &[&snapshot]).await;
        self.shared.db.report(&r);
        Ok(r?.get(0))
    }

    /// Disarms the switch without waiting: the read path must not pay a
    /// round trip for it, and a lost disarm only costs writers a NOTIFY.
    fn disarm(&mut self) {
        let (shared, id) = (self.shared.clone(), self.ep.id);
        let before = self.disarming.take();
        self.disarming = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            if let Ok(conn) = shared.db.conn().await {
                let r = conn.execute(&conn.st.disarm, &[&id]).await;
                shared.db.report(&r);
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_checks_double_then_slow_with_the_time_waited() {
        let poll = Duration::from_secs(1);
        let ms = Duration::from_millis;
        // The first moments: doubling from 1 ms up to 50 ms.
        assert_eq!(settle_delay(ms(1), ms(1), poll), ms(2));
        assert_eq!(settle_delay(ms(32), ms(63), poll), ms(50));
        assert_eq!(settle_delay(ms(50), ms(500), poll), ms(50));
        // Then a twentieth of the time waited, never more than doubling.
        assert_eq!(settle_delay(ms(50), ms(2_000), poll), ms(100));
        assert_eq!(settle_delay(ms(100), ms(6_000), poll), ms(200));
        assert_eq!(settle_delay(ms(200), ms(6_000), poll), ms(300));
        // At most a poll interval, however long the wait.
        assert_eq!(settle_delay(ms(1_000), ms(600_000), poll), poll);
        // A poll interval shorter than the first cadence bounds it too.
        assert_eq!(settle_delay(ms(32), ms(63), ms(20)), ms(20));
    }
}
