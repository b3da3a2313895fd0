//! Per-key queues, pure: each key's events in the order they were read, one
//! in flight per key, held keys (a failed head waits for its retry) with the
//! key's later events parked in the database, and the order of sends.
//!
//! Events without a key (or of an endpoint with `ordering = "none"`) and
//! redeliveries are loose: sent as soon as a slot is free, in id order with
//! the keys' heads.

use std::collections::{HashMap, HashSet, VecDeque};

/// Most events of one key kept in memory; the rest are parked, so one busy
/// key cannot fill the read-ahead budget.
pub const KEY_CAP: usize = 100;

/// What the queues need to know of an event.
pub trait Queued {
    fn id(&self) -> i64;
    /// The ordering key, when the event is ordered.
    fn key(&self) -> Option<&str>;
    fn partition(&self) -> i32;
}

/// What to do with an event just read.
#[derive(Debug)]
pub enum Pushed<E> {
    /// Queued in memory.
    Queued,
    /// Its key is held (or has parked events, or too many in memory): park it.
    Park(E),
    /// Already known (read twice after a take-over): nothing to do.
    Skip(E),
}

/// What an outcome asks the caller to do.
#[derive(Debug, PartialEq)]
pub enum Then<E> {
    /// Nothing.
    Nothing,
    /// The key is now held: park these events that were waiting behind it.
    Park(Vec<E>),
    /// The key moves on and its next events are parked: fetch them, with ids
    /// after the given one.
    FetchParked { key: String, after: i64 },
}

/// How an attempt ended, as far as the order is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered or dead: the key moves on.
    Settled,
    /// Will be retried: the key is held by this event.
    Retry,
}

#[derive(Debug)]
struct KeyState<E> {
    partition: i32,
    queue: VecDeque<E>,
    in_flight: bool,
    /// The head that failed and holds the key.
    held: Option<i64>,
    /// The key has events in `webhook.parked` (or some are being parked).
    parked: bool,
    /// Park writes not yet committed.
    parking: u32,
    /// A fetch of parked events is running.
    fetching: bool,
    /// Bumped by every park, so a fetch knows whether it saw them all.
    generation: u64,
    fetch_generation: u64,
    /// The newest parked event fetched, where the next fetch starts.
    last_parked: i64,
    /// The partition was given up while this key's event was in flight.
    orphan: bool,
}

impl<E> KeyState<E> {
    fn new(partition: i32) -> Self {
        KeyState {
            partition,
            queue: VecDeque::new(),
            in_flight: false,
            held: None,
            parked: false,
            parking: 0,
            fetching: false,
            generation: 0,
            fetch_generation: 0,
            last_parked: 0,
            orphan: false,
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty()
            && !self.in_flight
            && self.held.is_none()
            && !self.parked
            && self.parking == 0
            && !self.fetching
    }
}

/// One endpoint's queues.
#[derive(Debug)]
pub struct Keys<E> {
    keys: HashMap<String, KeyState<E>>,
    /// Keys whose head can be sent, oldest first.
    ready: VecDeque<String>,
    /// Unordered events and redeliveries, oldest first.
    loose: VecDeque<E>,
    /// Loose events in flight, by id (a redelivery is not fetched twice).
    loose_in_flight: HashSet<i64>,
    /// Events in memory, in flight or waiting.
    in_memory: usize,
    in_flight_by_partition: HashMap<i32, u32>,
}

impl<E> Default for Keys<E> {
    fn default() -> Self {
        Keys {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            loose: VecDeque::new(),
            loose_in_flight: HashSet::new(),
            in_memory: 0,
            in_flight_by_partition: HashMap::new(),
        }
    }
}

impl<E: Queued> Keys<E> {
    /// Events in memory (waiting or in flight): what the read-ahead budget counts.
    pub fn in_memory(&self) -> usize {
        self.in_memory
    }

    /// Events in flight per partition.
    pub fn in_flight_by_partition(&self) -> &HashMap<i32, u32> {
        &self.in_flight_by_partition
    }

    /// Keys held by an event in flight now (a due-holds fetch skips them).
    pub fn held_in_flight(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(_, s)| s.in_flight && s.held.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Loose events in flight now (a redeliveries fetch skips them).
    pub fn loose_in_flight(&self) -> Vec<i64> {
        self.loose_in_flight.iter().copied().collect()
    }

    /// At most this many events can be sent now: the keys listed as ready
    /// (a key may be listed twice, or be in flight since) and the loose
    /// events.
    pub fn ready_len(&self) -> usize {
        self.ready.len() + self.loose.len()
    }

    /// Whether anything can be sent now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || !self.loose.is_empty()
    }

    /// Whether the key is known to be held.
    pub fn is_held(&self, key: &str) -> bool {
        self.keys.get(key).is_some_and(|s| s.held.is_some())
    }

    /// An event read from the log.
    pub fn push_read(&mut self, e: E) -> Pushed<E> {
        let Some(key) = e.key() else {
            self.in_memory += 1;
            self.loose.push_back(e);
            return Pushed::Queued;
        };
        let key = key.to_string();
        let state = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyState::new(e.partition()));
        if state.held == Some(e.id()) || state.queue.iter().any(|q| q.id() == e.id()) {
            return Pushed::Skip(e);
        }
        if state.held.is_some() || state.parked || state.queue.len() >= KEY_CAP {
            state.parked = true;
            state.parking += 1;
            state.generation += 1;
            return Pushed::Park(e);
        }
        state.queue.push_back(e);
        self.in_memory += 1;
        if !state.in_flight && state.queue.len() == 1 {
            self.ready.push_back(key);
        }
        Pushed::Queued
    }

    /// A loose event to send outside any order (a redelivery); false when it
    /// is in flight already.
    pub fn push_loose(&mut self, e: E) -> bool {
        if self.loose_in_flight.contains(&e.id()) || self.loose.iter().any(|q| q.id() == e.id()) {
            return false;
        }
        self.in_memory += 1;
        self.loose.push_back(e);
        true
    }

    /// The next event to send, oldest first between the keys' heads and the
    /// loose events; it is in flight from now on.
    pub fn next_ready(&mut self) -> Option<E> {
        let key_head = self.ready.front().and_then(|k| {
            self.keys
                .get(k)
                .and_then(|s| s.queue.front())
                .map(|e| e.id())
        });
        let loose_head = self.loose.front().map(|e| e.id());
        let take_loose = match (key_head, loose_head) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(k), Some(l)) => l < k,
        };
        if take_loose {
            let e = self.loose.pop_front()?;
            self.loose_in_flight.insert(e.id());
            *self
                .in_flight_by_partition
                .entry(e.partition())
                .or_default() += 1;
            return Some(e);
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(state) = self.keys.get_mut(&key) else {
                continue;
            };
            let head = state.queue.front().map(|e| e.id());
            if state.in_flight || (state.held.is_some() && head != state.held) {
                continue;
            }
            if let Some(e) = state.queue.pop_front() {
                state.in_flight = true;
                *self
                    .in_flight_by_partition
                    .entry(e.partition())
                    .or_default() += 1;
                return Some(e);
            }
        }
        None
    }

    /// A held head fetched because its retry is due (or for a probe): queued
    /// as its key's head, to go with the next free slot. False when it is in
    /// flight or queued already, or no longer holds its key.
    pub fn ready_held(&mut self, e: E) -> bool {
        let Some(key) = e.key().map(str::to_string) else {
            return false;
        };
        let state = self.keys.entry(key.clone()).or_insert_with(|| {
            // Held by a relay before this one: there may be parked events.
            let mut s = KeyState::new(e.partition());
            s.held = Some(e.id());
            s.parked = true;
            s
        });
        if state.in_flight || state.held != Some(e.id()) || !state.queue.is_empty() {
            return false;
        }
        state.queue.push_back(e);
        self.in_memory += 1;
        self.ready.push_front(key);
        true
    }

    /// At a take-over: the key is held by `id` (from `webhook.holds`).
    pub fn load_held(&mut self, key: &str, id: i64, partition: i32) {
        let state = self
            .keys
            .entry(key.to_string())
            .or_insert_with(|| KeyState::new(partition));
        state.held = Some(id);
        state.parked = true;
    }

    /// At a take-over: the key has parked events (from `webhook.parked`).
    pub fn load_parked(&mut self, key: &str, partition: i32) -> Then<E> {
        let state = self
            .keys
            .entry(key.to_string())
            .or_insert_with(|| KeyState::new(partition));
        state.parked = true;
        Self::maybe_fetch(key, state)
    }

    /// The outcome of an attempt of an ordered event.
    pub fn finished(&mut self, key: &str, id: i64, partition: i32, outcome: Outcome) -> Then<E> {
        self.in_memory = self.in_memory.saturating_sub(1);
        self.leave_flight(partition);
        let Some(state) = self.keys.get_mut(key) else {
            return Then::Nothing;
        };
        state.in_flight = false;
        if state.orphan {
            self.keys.remove(key);
            return Then::Nothing;
        }
        match outcome {
            Outcome::Retry => {
                state.held = Some(id);
                if state.queue.is_empty() {
                    return Then::Nothing;
                }
                let waiting: Vec<E> = state.queue.drain(..).collect();
                self.in_memory = self.in_memory.saturating_sub(waiting.len());
                state.parked = true;
                state.parking += waiting.len() as u32;
                state.generation += 1;
                Then::Park(waiting)
            }
            Outcome::Settled => {
                if state.held == Some(id) {
                    state.held = None;
                }
                if state.held.is_some() {
                    return Then::Nothing;
                }
                if !state.queue.is_empty() {
                    self.ready.push_back(key.to_string());
                    return Then::Nothing;
                }
                let then = Self::maybe_fetch(key, state);
                if state.idle() {
                    self.keys.remove(key);
                }
                then
            }
        }
    }

    /// A probe that failed: the event is the key's head again, and nothing
    /// counts (a failed probe spends no attempt).
    pub fn probe_failed(&mut self, e: E) {
        self.leave_flight(e.partition());
        let Some(key) = e.key().map(str::to_string) else {
            self.loose_in_flight.remove(&e.id());
            self.loose.push_front(e);
            return;
        };
        let Some(state) = self.keys.get_mut(&key) else {
            self.in_memory = self.in_memory.saturating_sub(1);
            return;
        };
        state.in_flight = false;
        if state.held == Some(e.id()) {
            // A held head: it is fetched again when due.
            self.in_memory = self.in_memory.saturating_sub(1);
            return;
        }
        state.queue.push_front(e);
        self.ready.push_front(key);
    }

    /// The outcome of a loose event.
    pub fn finished_loose(&mut self, id: i64, partition: i32) {
        if self.loose_in_flight.remove(&id) {
            self.in_memory = self.in_memory.saturating_sub(1);
            self.leave_flight(partition);
        }
    }

    /// `n` park writes of the key have committed.
    pub fn parking_done(&mut self, key: &str, n: u32) -> Then<E> {
        let Some(state) = self.keys.get_mut(key) else {
            return Then::Nothing;
        };
        state.parking = state.parking.saturating_sub(n);
        Self::maybe_fetch(key, state)
    }

    /// A park write failed: the events are queued again in memory as they
    /// were (the cursor stays before them, so nothing is lost either way).
    pub fn parking_failed(&mut self, key: &str, n: u32) {
        if let Some(state) = self.keys.get_mut(key) {
            state.parking = state.parking.saturating_sub(n);
        }
    }

    /// Parked events fetched (in id order, at most `limit`).
    pub fn parked_fetched(&mut self, key: &str, rows: Vec<E>, limit: usize) -> Then<E> {
        let Some(state) = self.keys.get_mut(key) else {
            return Then::Nothing;
        };
        state.fetching = false;
        let complete = rows.len() < limit && state.generation == state.fetch_generation;
        for e in rows {
            state.last_parked = state.last_parked.max(e.id());
            if state.held == Some(e.id()) || state.queue.iter().any(|q| q.id() == e.id()) {
                continue;
            }
            state.queue.push_back(e);
            self.in_memory += 1;
        }
        if complete {
            state.parked = false;
        }
        if !state.queue.is_empty() {
            if !state.in_flight && state.held.is_none() {
                self.ready.push_back(key.to_string());
            }
            return Then::Nothing;
        }
        let then = Self::maybe_fetch(key, state);
        if state.idle() {
            self.keys.remove(key);
        }
        then
    }

    /// A fetch of parked events failed: it is asked for again later.
    pub fn fetch_failed(&mut self, key: &str) -> Then<E> {
        let Some(state) = self.keys.get_mut(key) else {
            return Then::Nothing;
        };
        state.fetching = false;
        Self::maybe_fetch(key, state)
    }

    /// Keys whose parked events should be fetched now (after a failed fetch
    /// or park write).
    pub fn fetches_due(&mut self) -> Vec<Then<E>> {
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        keys.into_iter()
            .filter_map(|k| {
                let state = self.keys.get_mut(&k)?;
                match Self::maybe_fetch(&k, state) {
                    Then::Nothing => None,
                    t => Some(t),
                }
            })
            .collect()
    }

    /// The partition is no longer this relay's: every waiting event of it
    /// leaves memory (returned, to be accounted for); events in flight finish.
    pub fn drop_partition(&mut self, partition: i32) -> Vec<E> {
        let mut gone = Vec::new();
        self.keys.retain(|_, s| {
            if s.partition != partition {
                return true;
            }
            gone.extend(s.queue.drain(..));
            if s.in_flight {
                s.orphan = true;
                true
            } else {
                false
            }
        });
        let loose = std::mem::take(&mut self.loose);
        for e in loose {
            if e.partition() == partition {
                gone.push(e);
            } else {
                self.loose.push_back(e);
            }
        }
        self.in_memory = self.in_memory.saturating_sub(gone.len());
        gone
    }

    fn maybe_fetch(key: &str, state: &mut KeyState<E>) -> Then<E> {
        if state.parked
            && state.parking == 0
            && !state.fetching
            && !state.in_flight
            && state.held.is_none()
            && state.queue.is_empty()
            && !state.orphan
        {
            state.fetching = true;
            state.fetch_generation = state.generation;
            return Then::FetchParked {
                key: key.to_string(),
                after: state.last_parked,
            };
        }
        Then::Nothing
    }

    fn leave_flight(&mut self, partition: i32) {
        if let Some(n) = self.in_flight_by_partition.get_mut(&partition) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight_by_partition.remove(&partition);
            }
        }
    }
}

#[cfg(test)]
mod tests;
