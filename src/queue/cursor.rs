//! Which reads are wholly settled: every event a read returned carries a
//! token, given back once its outcome (or its park) has committed; a
//! partition's cursor moves to the newest tick whose reads, and all before
//! it, gave every token back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::ticks::Tick;

/// One read (or a read's pages) of the log, up to `tick`.
#[derive(Debug)]
pub struct Read {
    tick: Tick,
    unsettled: AtomicUsize,
    sealed: AtomicBool,
    /// A token was dropped without being settled (an attempt abandoned at
    /// shutdown): the cursor stays before this read, which is read again
    /// after a restart.
    lost: AtomicBool,
}

/// An event's share of its read: settled when its outcome has been written.
#[derive(Debug)]
pub struct Token(Option<Arc<Read>>);

impl Token {
    /// An event that belongs to no read (held heads, parked events,
    /// redeliveries): its row is in a table of its own until settled.
    pub fn none() -> Token {
        Token(None)
    }

    /// The event's outcome (or park) has committed.
    pub fn settle(mut self) {
        if let Some(r) = self.0.take() {
            r.unsettled.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.lost.store(true, Ordering::Release);
            r.unsettled.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One endpoint's reads not yet wholly settled, oldest first.
#[derive(Debug, Default)]
pub struct Reads {
    open: VecDeque<Arc<Read>>,
}

impl Reads {
    /// A read up to `tick` begins; its events take tokens from it until
    /// [`Reads::seal`].
    pub fn begin(&mut self, tick: Tick) -> Arc<Read> {
        let r = Arc::new(Read {
            tick,
            unsettled: AtomicUsize::new(0),
            sealed: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        });
        self.open.push_back(r.clone());
        r
    }

    /// A token of `read` for one of its events.
    pub fn token(read: &Arc<Read>) -> Token {
        read.unsettled.fetch_add(1, Ordering::AcqRel);
        Token(Some(read.clone()))
    }

    /// Every event of the read has its token.
    pub fn seal(read: &Arc<Read>) {
        read.sealed.store(true, Ordering::Release);
    }

    /// The read stops before it has read everything (shutdown): the cursor
    /// stays before it, whatever becomes of the events it did read.
    pub fn abandon(read: &Arc<Read>) {
        read.lost.store(true, Ordering::Release);
        read.sealed.store(true, Ordering::Release);
    }

    /// The newest tick up to which every read is settled, if it moved.
    pub fn advance(&mut self) -> Option<Tick> {
        let mut moved = None;
        while let Some(r) = self.open.front() {
            let done = r.sealed.load(Ordering::Acquire)
                && r.unsettled.load(Ordering::Acquire) == 0
                && !r.lost.load(Ordering::Acquire);
            if !done {
                break;
            }
            moved = Some(r.tick.clone());
            self.open.pop_front();
        }
        moved
    }

    /// Whether every token has come back, settled or lost: nothing more
    /// will move the cursor.
    pub fn settled_or_stuck(&self) -> bool {
        self.open
            .iter()
            .all(|r| r.unsettled.load(Ordering::Acquire) == 0)
    }

    /// Reads not yet settled.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(n: u64) -> Tick {
        Tick::parse(&format!("{n}:{n}:")).unwrap()
    }

    #[test]
    fn the_cursor_moves_over_settled_reads_only_in_order() {
        let mut reads = Reads::default();
        let a = reads.begin(tick(1));
        let ta = Reads::token(&a);
        Reads::seal(&a);
        let b = reads.begin(tick(2));
        let tb = Reads::token(&b);
        Reads::seal(&b);
        assert_eq!(reads.advance(), None);
        tb.settle();
        assert_eq!(reads.advance(), None, "the older read is not settled");
        ta.settle();
        assert_eq!(reads.advance(), Some(tick(2)));
        assert_eq!(reads.open(), 0);
    }

    #[test]
    fn an_unsealed_read_or_a_lost_token_holds_the_cursor() {
        let mut reads = Reads::default();
        let a = reads.begin(tick(1));
        assert_eq!(reads.advance(), None);
        Reads::seal(&a);
        assert_eq!(reads.advance(), Some(tick(1)));
        let b = reads.begin(tick(2));
        drop(Reads::token(&b));
        Reads::seal(&b);
        assert_eq!(reads.advance(), None);
    }

    #[test]
    fn an_abandoned_read_holds_the_cursor_though_its_events_settled() {
        let mut reads = Reads::default();
        let a = reads.begin(tick(1));
        Reads::token(&a).settle();
        Reads::abandon(&a);
        assert_eq!(reads.advance(), None);
        assert!(reads.settled_or_stuck());
    }
}
