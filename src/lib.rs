//! outbox-relay: Postgres triggers write events into `webhook.outbox` inside
//! the application's own transaction; this relay delivers them as signed
//! webhooks, retries failures and writes each outcome back onto the row.
//!
//! # Layout
//!
//! - [`config`]: the TOML config file, its defaults and validation.
//! - [`db`]: connecting to Postgres.
//! - [`demo`]: `outbox-relay demo`, the whole pipeline on a throwaway cluster with a scripted story.
//! - [`migrate`]: embedded migrations, schema version check, endpoint mirror.
//! - [`receiver`]: a local receiver that verifies signatures (`outbox-relay receive`, the demo).
//! - [`throwaway`]: a temporary Postgres cluster for the demo, benchmarks and tests.

pub mod completer;
pub mod config;
pub mod db;
pub mod deliver;
pub mod demo;
pub mod dispatcher;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod migrate;
pub mod receiver;
pub mod relay;
pub mod rescuer;
pub mod retry;
pub mod sign;
pub mod ssrf;
pub mod throwaway;
