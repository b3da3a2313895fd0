//! The status page at `GET /` on `listen`: what a person opening a browser
//! needs at a glance (docs/operations.md). Server-rendered HTML with inline
//! CSS and nothing else (it works on a host without internet), refreshing
//! itself. When `api_admin_token` is set the page asks for it: a form posts it
//! to `/login`, which sets a session cookie; `Authorization: Bearer` works too.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::api::{Api, Scope};

mod html;
pub use html::{escape, render, render_login, Endpoint, Failure, Page};

/// Minutes of attempts the page shows per endpoint, one bar each.
pub const MINUTES: i32 = 15;
/// Failed attempts listed.
pub const FAILURES: i64 = 20;
/// Characters of a response body shown per failure.
pub const EXCERPT_CHARS: i32 = 300;
/// Seconds between the page's own refreshes.
pub const REFRESH_SECONDS: u32 = 10;
/// The session cookie set by `/login`.
pub const COOKIE: &str = "outbox_relay_session";

pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", post(login))
        .with_state(api)
}

/// The headers of every page: HTML, never cached, and a content security
/// policy that lets it load nothing at all beyond its own inline styles.
fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// Whether the request may see the page: no admin token configured, or the
/// session cookie, or the admin token as a bearer token.
fn allowed(api: &Api, headers: &HeaderMap) -> bool {
    let Some(session) = api.tokens.admin_session() else {
        return true;
    };
    let cookie_ok = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| {
            name == COOKIE && constant_time_eq(value.as_bytes(), session.as_bytes())
        });
    let bearer_ok = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            v.get(..7)
                .filter(|s| s.eq_ignore_ascii_case(b"bearer "))
                .map(|_| v[7..].trim_ascii())
        })
        .is_some_and(|t| api.tokens.check(t) == Some(Scope::Admin));
    cookie_ok || bearer_ok
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if !allowed(&api, &headers) {
        return html_response(StatusCode::UNAUTHORIZED, render_login(None));
    }
    match collect(&api).await {
        Ok(page) => html_response(StatusCode::OK, render(&page)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "status page: reading the database failed");
            html_response(StatusCode::SERVICE_UNAVAILABLE, html::render_unavailable())
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(api): State<Arc<Api>>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let presented = form.map(|Form(f)| f.token).unwrap_or_default();
    let (Some(session), Some(Scope::Admin)) = (
        api.tokens.admin_session(),
        api.tokens.check(presented.trim().as_bytes()),
    ) else {
        return html_response(
            StatusCode::UNAUTHORIZED,
            render_login(Some("That is not the admin token.")),
        );
    };
    let cookie = format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// Reads what the page shows (two statements, on the API's own connection).
async fn collect(api: &Api) -> anyhow::Result<Page> {
    let conn = api.db.conn().await?;
    let r = conn
        .query(
            conn.sql(include_str!("../sql/page_endpoints.sql")),
            &[&MINUTES],
        )
        .await;
    api.db.report(&r);
    let endpoints = r?
        .iter()
        .map(|r| Endpoint {
            name: r.get(0),
            state: r.get(1),
            paused_at: r.get(2),
            paused_by: r.get(3),
            failing_since: r.get(4),
            last_probe_at: r.get(5),
            delivered_per_minute: r.get(6),
            failed_per_minute: r.get(7),
            pending: r.get(8),
            in_flight: r.get(9),
            dead: r.get(10),
            oldest_pending_seconds: r.get(11),
            held_keys: r.get(12),
        })
        .collect();
    let r = conn
        .query(
            conn.sql(include_str!("../sql/page_failures.sql")),
            &[&FAILURES, &EXCERPT_CHARS],
        )
        .await;
    api.db.report(&r);
    let failures = r?
        .iter()
        .map(|r| Failure {
            at: r.get::<_, DateTime<Utc>>(0),
            endpoint: r.get(1),
            event_id: r.get(2),
            event_code: r.get(3),
            attempt: r.get(4),
            probe: r.get(5),
            response_status: r.get(6),
            error: r.get(7),
            response_excerpt: r.get(8),
            row_status: r.get(9),
        })
        .collect();
    Ok(Page {
        generated_at: Utc::now(),
        endpoints,
        failures,
    })
}
