//! outbox-relay: Postgres triggers write events into `webhook.outbox` inside
//! the application's own transaction; this relay delivers them as signed
//! webhooks, retries failures and writes each outcome back onto the row.
//!
//! # Layout
//!
//! The relay daemon (`outbox-relay run`), in the order a row flows:
//!
//! - [`relay`]: wires the tasks below together and takes them down in order.
//! - [`listener`]: the dedicated LISTEN connection; NOTIFYs become wake-ups.
//! - [`queue`]: the log read in commit order: partitions owned under a lease, ticks, per-key
//!   queues, held and parked keys, the cursor, the write-back of outcomes.
//! - [`dispatcher`]: one loop per endpoint: read its partitions, send each key's head, move the cursor.
//! - [`breaker`]: the circuit breaker: pause an endpoint that only fails, probe it, resume it.
//! - [`tally`]: attempts per endpoint and minute, for the status page.
//! - [`deliver`]: one attempt: sign, rate-limit, POST, read a bounded excerpt of the answer.
//! - [`egress`]: the HTTP clients: trust roots, client certificates, proxies.
//! - [`sign`]: Standard Webhooks signing, pure.
//! - [`ssrf`]: the optional guard against delivering to non-public addresses.
//! - [`retry`]: when to try again, or give up, pure.
//! - [`sampler`]: the row counts behind `/metrics`.
//! - [`retention`]: removes old delivered rows and attempts in bounded batches.
//! - [`http`]: the server on `listen`: health, readiness, metrics and the status API.
//! - [`page`]: the status page at `/`: per endpoint state, traffic, backlog, latest failures.
//! - [`api`]: the token-protected, read-only event status API.
//! - [`metrics`]: Prometheus metrics and the readiness flags.
//!
//! Shared ground and the other commands:
//!
//! - [`config`]: the TOML config file, its defaults and validation.
//! - [`db`]: connecting to Postgres; the relay's reconnecting connections and their statements
//!   (prepared, or unnamed behind a transaction pooler).
//! - [`pgtls`]: libpq's `sslmode` and certificate parameters, and the rustls connector they drive.
//! - [`migrate`]: embedded migrations, schema version check, endpoint mirror.
//! - [`status`]: `outbox-relay status`, per-endpoint queue state as a table or JSON.
//! - [`replay`]: `outbox-relay replay`, requeueing rows through `webhook.replay`.
//! - [`pause`]: `outbox-relay pause` / `resume`, an endpoint held or let go by hand.
//! - [`demo`]: `outbox-relay demo`, the whole pipeline on a throwaway cluster with a scripted story.
//! - [`receiver`]: a local receiver that verifies signatures (`outbox-relay receive`, the demo).
//! - [`throwaway`]: a temporary Postgres cluster for the demo, benchmarks and tests.

pub mod api;
pub mod breaker;
pub mod config;
pub mod db;
pub mod deliver;
pub mod demo;
pub mod dispatcher;
pub mod egress;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod migrate;
pub mod page;
pub mod pause;
pub mod pgtls;
pub mod queue;
pub mod receiver;
pub mod relay;
pub mod replay;
pub mod retention;
pub mod retry;
pub mod sampler;
pub mod sign;
pub mod ssrf;
pub mod status;
pub mod tally;
pub mod throwaway;
