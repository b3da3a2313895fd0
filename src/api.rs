//! The read-only event status API on `listen` (docs/api.md): a receiver that
//! missed webhooks asks what happened to an event, or pages through its
//! endpoint's events to reconcile. Bearer tokens from the config file; an
//! endpoint's token sees only that endpoint's rows, the admin token all.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio_postgres::Row;

use crate::config::Config;
use crate::db::{self, Db};

/// Rows per page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 100;
/// Most rows one page may ask for.
pub const MAX_PAGE: i64 = 1000;
/// Longest event id accepted in a path (generated ids have 36 characters).
const MAX_EVENT_ID: usize = 200;
/// Statuses a row can have, as accepted by `?status=`.
const STATUSES: &[&str] = &["pending", "in_flight", "delivered", "dead"];

type HmacSha256 = Hmac<Sha256>;

/// What a token may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    /// The rows of this endpoint (by name) only.
    Endpoint(String),
}

/// The configured tokens, kept only as HMAC tags under a key made up at
/// start: a presented token is checked with `verify_slice`, in constant time.
pub struct Tokens {
    key: [u8; 32],
    entries: Vec<(Vec<u8>, Scope)>,
}

impl Tokens {
    pub fn from_config(cfg: &Config) -> Tokens {
        let mut tokens = Tokens {
            key: rand::random(),
            entries: Vec::new(),
        };
        if let Some(t) = &cfg.api_admin_token {
            let tag = tokens.tag(t.as_bytes());
            tokens.entries.push((tag, Scope::Admin));
        }
        for ep in &cfg.endpoints {
            if let Some(t) = &ep.api_token {
                let tag = tokens.tag(t.as_bytes());
                tokens.entries.push((tag, Scope::Endpoint(ep.name.clone())));
            }
        }
        tokens
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    fn tag(&self, token: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(token);
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether an admin token is configured.
    pub fn has_admin(&self) -> bool {
        self.entries.iter().any(|(_, s)| *s == Scope::Admin)
    }

    /// The status page's session cookie value: the admin token's tag, in
    /// hex. It proves the token was presented to this process (the key is
    /// made up at start) without being the token.
    pub fn admin_session(&self) -> Option<String> {
        self.entries
            .iter()
            .find(|(_, s)| *s == Scope::Admin)
            .map(|(tag, _)| tag.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The scope of a presented token, if it is one of ours.
    pub fn check(&self, presented: &[u8]) -> Option<Scope> {
        self.entries.iter().find_map(|(tag, scope)| {
            let mut mac = self.mac();
            mac.update(presented);
            mac.verify_slice(tag).is_ok().then(|| scope.clone())
        })
    }
}

/// The API's state: its own database connection and the tokens.
pub struct Api {
    pub(crate) db: Db,
    pub(crate) tokens: Tokens,
}

impl Api {
    pub fn new(db: Db, tokens: Tokens) -> Api {
        Api { db, tokens }
    }
}

pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/events/{event_id}", get(event))
        .route("/v1/endpoints/{name}/events", get(endpoint_events))
        .with_state(api)
}

/// An error answer: the status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// No connection to the database: 503. The detail goes to the log.
    fn unavailable(e: anyhow::Error) -> ApiError {
        tracing::warn!(error = %format!("{e:#}"), "status API: database unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable; try again later",
        )
    }

    /// A failed query: 503 if the connection was lost, else 500. The detail
    /// goes to the log, not to the caller.
    fn query(e: tokio_postgres::Error) -> ApiError {
        if db::is_connection_error(&e) {
            ApiError::unavailable(e.into())
        } else {
            tracing::error!(error = %e, "status API query failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            (
                self.status,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"outbox-relay\"")],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// The caller's scope from `Authorization: Bearer <token>`.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<Scope, ApiError> {
    let unauthorized = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, why);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing bearer token: send Authorization: Bearer <token>"))?;
    let value = value.as_bytes();
    let token = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| value[7..].trim_ascii())
        .ok_or_else(|| unauthorized("missing bearer token: send Authorization: Bearer <token>"))?;
    api.tokens
        .check(token)
        .ok_or_else(|| unauthorized("invalid token"))
}

/// One endpoint's copy of an event.
#[derive(Serialize)]
pub struct Delivery {
    pub endpoint: String,
    pub status: String,
    pub attempts: i32,
    /// When the next attempt is due; null unless pending or in flight.
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub response_ms: Option<i32>,
    pub last_error: Option<String>,
}

/// `GET /v1/events/{event_id}`.
#[derive(Serialize)]
pub struct EventStatus {
    pub event_id: String,
    pub event_code: String,
    pub payload: serde_json::Value,
    pub created_at: String,
    pub deliveries: Vec<Delivery>,
}

/// One row of `GET /v1/endpoints/{name}/events`.
#[derive(Serialize)]
pub struct EndpointEvent {
    /// The outbox row id: the `after` cursor of the next page.
    pub id: i64,
    pub event_id: String,
    pub event_code: String,
    pub payload: serde_json::Value,
    pub created_at: String,
    #[serde(flatten)]
    pub delivery: Delivery,
}

#[derive(Serialize)]
pub struct EndpointEvents {
    pub endpoint: String,
    pub events: Vec<EndpointEvent>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The delivery columns, starting at column `at` in the order the status
/// queries select them: status, attempts, next_attempt_at, delivered_at,
/// response_status, response_body, response_ms, last_error.
fn delivery(endpoint: String, row: &Row, at: usize) -> Delivery {
    let status: String = row.get(at);
    let waiting = status == "pending" || status == "in_flight";
    Delivery {
        endpoint,
        attempts: row.get(at + 1),
        next_attempt_at: waiting.then(|| time(row.get(at + 2))),
        delivered_at: row.get::<_, Option<DateTime<Utc>>>(at + 3).map(time),
        response_status: row.get(at + 4),
        response_body: row.get(at + 5),
        response_ms: row.get(at + 6),
        last_error: row.get(at + 7),
        status,
    }
}

async fn query(
    api: &Api,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, ApiError> {
    let conn = api.db.conn().await.map_err(ApiError::unavailable)?;
    let r = conn.query(conn.sql(sql), params).await;
    api.db.report(&r);
    r.map_err(ApiError::query)
}

async fn event(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EventStatus>, ApiError> {
    let scope = authorize(&api, &headers)?;
    let Path(event_id) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if event_id.is_empty() || event_id.len() > MAX_EVENT_ID {
        return Err(ApiError::bad_request(format!(
            "an event id has 1 to {MAX_EVENT_ID} characters"
        )));
    }
    let only = match &scope {
        Scope::Admin => None,
        Scope::Endpoint(name) => Some(name.as_str()),
    };
    let rows = query(
        &api,
        include_str!("../sql/api_event.sql"),
        &[&event_id, &only],
    )
    .await?;
    let Some(first) = rows.first() else {
        return Err(ApiError::not_found("no such event"));
    };
    Ok(Json(EventStatus {
        event_code: first.get(0),
        payload: first.get(1),
        created_at: time(first.get(2)),
        deliveries: rows.iter().map(|r| delivery(r.get(3), r, 4)).collect(),
        event_id,
    }))
}

/// The query string of `GET /v1/endpoints/{name}/events`, checked.
#[derive(Debug, PartialEq)]
struct PageQuery {
    status: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: i64,
    after: i64,
}

fn page_query(raw: Option<&str>) -> Result<PageQuery, String> {
    let mut q = PageQuery {
        status: None,
        since: None,
        limit: DEFAULT_PAGE,
        after: 0,
    };
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "status" => {
                if !STATUSES.contains(&&*value) {
                    return Err(format!(
                        "status must be one of {}, not {value:?}",
                        STATUSES.join(", ")
                    ));
                }
                q.status = Some(value.into_owned());
            }
            "since" => {
                let t = DateTime::parse_from_rfc3339(&value).map_err(|_| {
                    format!("since must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not {value:?}")
                })?;
                q.since = Some(t.with_timezone(&Utc));
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| format!("limit must be a whole number from 1 to {MAX_PAGE}"))?;
            }
            "after" => {
                q.after = value
                    .parse()
                    .ok()
                    .filter(|n: &i64| *n >= 0)
                    .ok_or("after must be a row id (a whole number, 0 or more)")?;
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (known: status, since, limit, after)"
                ))
            }
        }
    }
    Ok(q)
}

async fn endpoint_events(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Json<EndpointEvents>, ApiError> {
    let scope = authorize(&api, &headers)?;
    let Path(name) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let q = page_query(raw.as_deref()).map_err(ApiError::bad_request)?;
    // Another endpoint's rows look exactly like an endpoint that does not
    // exist: a token learns nothing about the other endpoints.
    if matches!(&scope, Scope::Endpoint(own) if *own != name) {
        return Err(ApiError::not_found("no such endpoint"));
    }
    let found = query(&api, include_str!("../sql/api_endpoint.sql"), &[&name]).await?;
    let Some(endpoint_id) = found.first().map(|r| r.get::<_, i32>(0)) else {
        return Err(ApiError::not_found("no such endpoint"));
    };
    let rows = query(
        &api,
        include_str!("../sql/api_endpoint_events.sql"),
        &[&endpoint_id, &q.after, &q.status, &q.since, &q.limit],
    )
    .await?;
    let events: Vec<EndpointEvent> = rows
        .iter()
        .map(|r| EndpointEvent {
            id: r.get(0),
            event_id: r.get(1),
            event_code: r.get(2),
            payload: r.get(3),
            created_at: time(r.get(4)),
            delivery: delivery(name.clone(), r, 5),
        })
        .collect();
    let next_after = (events.len() as i64 == q.limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(EndpointEvents {
        endpoint: name,
        events,
        next_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.toml", &|_| None).unwrap()
    }

    #[test]
    fn tokens_map_to_their_scope_and_nothing_else() {
        let cfg = config(
            "api_admin_token = \"admin-token-0123456789\"\n\
             [[endpoint]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9/\"\nevents = [\"add_credits\"]\n\
             secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\napi_token = \"crm-token-0123456789\"\n",
        );
        let tokens = Tokens::from_config(&cfg);
        assert_eq!(tokens.check(b"admin-token-0123456789"), Some(Scope::Admin));
        assert_eq!(
            tokens.check(b"crm-token-0123456789"),
            Some(Scope::Endpoint("crm".into()))
        );
        for bad in [
            &b""[..],
            b"crm-token-012345678",
            b"crm-token-01234567890",
            b"CRM-TOKEN-0123456789",
        ] {
            assert_eq!(tokens.check(bad), None);
        }
        // No token configured: nothing gets in.
        let none = Tokens::from_config(&config(""));
        assert_eq!(none.check(b""), None);
        assert_eq!(none.check(b"admin-token-0123456789"), None);
    }

    #[test]
    fn page_queries_are_checked() {
        assert_eq!(
            page_query(None).unwrap(),
            PageQuery {
                status: None,
                since: None,
                limit: DEFAULT_PAGE,
                after: 0
            }
        );
        let q = page_query(Some(
            "status=dead&since=2024-05-01T12:00:00%2B02:00&limit=5&after=42",
        ))
        .unwrap();
        assert_eq!(q.status.as_deref(), Some("dead"));
        assert_eq!(q.since.unwrap().to_rfc3339(), "2024-05-01T10:00:00+00:00");
        assert_eq!((q.limit, q.after), (5, 42));
        for (bad, why) in [
            ("status=lost", "status must be one of"),
            ("since=yesterday", "RFC 3339"),
            ("limit=0", "1 to 1000"),
            ("limit=1001", "1 to 1000"),
            ("limit=ten", "1 to 1000"),
            ("after=-1", "after must be"),
            ("colour=blue", "unknown query parameter \"colour\""),
        ] {
            let err = page_query(Some(bad)).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
