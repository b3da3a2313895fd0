//! The queue, in the order an event goes through it (docs/queue.md):
//!
//! - [`ownership`]: which partitions of each endpoint's keys this relay owns, under a lease.
//! - [`ticks`]: snapshots of the transaction ids, and the reads between two of them (pure).
//! - [`reader`]: the statements that read the log, holds, parked events and redeliveries.
//! - [`keys`]: per-key queues, one event in flight per key, held and parked keys (pure).
//! - [`cursor`]: which reads are wholly settled, so a partition's cursor can move.
//! - [`writeback`]: outcomes, holds, parks and dead rows written back in batches.

pub mod cursor;
pub mod keys;
pub mod ownership;
pub mod reader;
pub mod ticks;
pub mod writeback;
