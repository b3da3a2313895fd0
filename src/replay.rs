//! `outbox-relay replay`: requeues rows through the `webhook.replay` SQL
//! functions (migrations/V2__operations.sql), so the command and a DBA in
//! psql follow the same rules: rows keep their event_id, get a fresh attempt
//! budget, keep their history in webhook.attempts, and a NOTIFY wakes the
//! relay at once.

use std::time::SystemTime;

use anyhow::{Context, Result};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// Which rows to replay.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// One outbox row by id.
    One(i64),
    /// Every row in `status`, of one endpoint (or all), created in
    /// [since, until).
    Matching {
        endpoint: Option<String>,
        status: String,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
    },
}

/// Replays the rows (or with `dry_run` only counts them); returns how many.
/// A refusal by the SQL function (unknown id or endpoint, a row in flight)
/// comes back as an error carrying the function's own message.
pub async fn replay(client: &Client, selection: &Selection, dry_run: bool) -> Result<i64> {
    let result = match selection {
        Selection::One(id) => {
            // Unnamed statements (query_typed), with the types the SQL
            // casts to: these work through a pooler in transaction mode too.
            client
                .query_typed_one(
                    include_str!("../sql/replay_one.sql"),
                    &[(id, Type::INT8), (&dry_run, Type::BOOL)],
                )
                .await
        }
        Selection::Matching {
            endpoint,
            status,
            since,
            until,
        } => {
            client
                .query_typed_one(
                    include_str!("../sql/replay_matching.sql"),
                    &[
                        (endpoint, Type::TEXT),
                        (status, Type::TEXT),
                        (since, Type::TIMESTAMPTZ),
                        (until, Type::TIMESTAMPTZ),
                        (&dry_run, Type::BOOL),
                    ],
                )
                .await
        }
    };
    match result {
        Ok(row) => Ok(row.get(0)),
        Err(e) => match e.as_db_error() {
            // The function's message already says what and why.
            Some(db) => Err(anyhow::anyhow!("{}", db.message())),
            None => Err(e).context("replaying"),
        },
    }
}

/// A time on the command line: RFC 3339 (`2024-05-01T12:00:00Z`, any
/// offset), `2024-05-01 12:00:00` or `2024-05-01` (UTC), or an age such as
/// `2h` or `3d` meaning that long before `now`.
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(age) = humantime::parse_duration(text) {
        return now
            .checked_sub(age)
            .ok_or_else(|| format!("{text:?} reaches back before 1970"));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.into());
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = d
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists on every date");
        return Ok(midnight.and_utc().into());
    }
    Err(format!(
        "{text:?} is not a time: write 2024-05-01T12:00:00Z, 2024-05-01, or an age such as 2h"
    ))
}

/// A time as RFC 3339 in UTC, for messages.
pub fn describe(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_every_documented_form() {
        let now = humantime::parse_rfc3339("2024-05-10T12:00:00Z").unwrap();
        let at = |s: &str| describe(parse_time(s, now).unwrap());
        assert_eq!(at("2h"), "2024-05-10T10:00:00Z");
        assert_eq!(at("3d"), "2024-05-07T12:00:00Z");
        assert_eq!(at("2024-05-01T12:00:00Z"), "2024-05-01T12:00:00Z");
        assert_eq!(at("2024-05-01T14:00:00+02:00"), "2024-05-01T12:00:00Z");
        assert_eq!(at("2024-05-01 12:30:00"), "2024-05-01T12:30:00Z");
        assert_eq!(at("2024-05-01"), "2024-05-01T00:00:00Z");
        let err = parse_time("last tuesday", now).unwrap_err();
        assert!(err.contains("not a time"), "{err}");
    }
}
