//! Integration tests: a real Postgres (throwaway cluster or TEST_DATABASE_URL),
//! real HTTP receivers on 127.0.0.1, the real binary where a process matters.

mod support;

mod api;
mod breaker;
mod bulk;
mod cli;
mod delivery;
mod demo;
mod egress;
mod fuzz;
mod long_transaction;
mod monitoring;
mod operations;
mod ordering;
mod page;
mod pgtls;
mod pooler;
mod process;
mod queue;
mod receiver;
mod relays;
mod reliability;
mod schema;
mod ssrf;
mod triggers;
mod upgrade;
mod wakeup;
