//! `outbox-relay pause` / `resume`: hold an endpoint's deliveries by hand, or
//! let them go, through the `webhook.pause_endpoint` / `webhook.resume_endpoint`
//! SQL functions (migrations/V7__circuit_breaker.sql), so the command and a
//! DBA in psql do the same thing. Running relays follow within a claim.

use anyhow::{Context, Result};
use tokio_postgres::Client;

/// Pause or resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
}

/// Applies `action` to the endpoint named `endpoint`; returns whether its
/// state changed (false: it was already paused, or already running). An
/// unknown name comes back as the SQL function's own message.
pub async fn apply(client: &Client, action: Action, endpoint: &str) -> Result<bool> {
    let sql = match action {
        Action::Pause => include_str!("../sql/pause_endpoint.sql"),
        Action::Resume => include_str!("../sql/resume_endpoint.sql"),
    };
    // Unnamed (query_typed): works through a pooler in transaction mode too.
    match client
        .query_typed_one(sql, &[(&endpoint, tokio_postgres::types::Type::TEXT)])
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(e) => match e.as_db_error() {
            Some(db) => Err(anyhow::anyhow!("{}", db.message())),
            None => Err(e).context("changing the endpoint's state"),
        },
    }
}

/// What the command prints.
pub fn describe(action: Action, endpoint: &str, changed: bool) -> String {
    match (action, changed) {
        (Action::Pause, true) => format!(
            "paused endpoint {endpoint:?}: its rows stay pending and no probes are sent until \
             `outbox-relay resume --endpoint {endpoint}`"
        ),
        (Action::Pause, false) => format!(
            "endpoint {endpoint:?} was already paused; it is now a pause by hand (no probes)"
        ),
        (Action::Resume, true) => {
            format!("resumed endpoint {endpoint:?}: running relays deliver its backlog now")
        }
        (Action::Resume, false) => format!("endpoint {endpoint:?} was not paused"),
    }
}
