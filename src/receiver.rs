//! A local webhook receiver that verifies Standard Webhooks signatures: the
//! engine of `outbox-relay receive` (developers testing their set-up) and of
//! the demo's in-process receiver.
//!
//! [`serve`] answers POST on any path: it checks the signature with
//! [`sign::verify`], asks the caller which status to answer a valid request
//! with (200, or a rehearsed failure), answers 401 with the reason to an
//! invalid one, and hands every request to a callback that shows it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::sign::{self, VerifyError};

/// Distinct webhook-ids remembered for counting redeliveries; past this the
/// count starts again, so a receiver left running for days stays small.
const REMEMBERED_IDS: usize = 100_000;
/// How long `receive` waits for open connections to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Most bytes of a non-JSON body printed by `receive`.
const PRINTED_BODY_BYTES: usize = 64 * 1024;

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub received_at: chrono::DateTime<chrono::Local>,
    pub path: String,
    /// The `webhook-id` header, if present.
    pub id: Option<String>,
    /// The `webhook-timestamp` header, if present.
    pub timestamp: Option<String>,
    /// Ok, or why the signature was refused.
    pub verified: Result<(), VerifyError>,
    /// How many requests with this webhook-id have arrived, this one
    /// included: 2 and up are the sender's retries.
    pub delivery: usize,
    pub body: Bytes,
}

impl Webhook {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body's `eventCode` (as the reference triggers write it), if any.
    pub fn event_code(&self) -> Option<String> {
        self.json()?.get("eventCode")?.as_str().map(str::to_owned)
    }
}

/// Chooses the status for a request whose signature verified.
pub type AnswerFn = dyn Fn(&Webhook) -> StatusCode + Send + Sync;
/// Shows a request once its answer is decided.
pub type OnWebhookFn = dyn Fn(&Webhook, StatusCode) + Send + Sync;

struct Inner {
    secret: Secret,
    answer: Box<AnswerFn>,
    on_webhook: Box<OnWebhookFn>,
    seen: Mutex<HashMap<String, usize>>,
}

/// Serves on `listener` until `shutdown` is cancelled, then lets open
/// requests finish. `answer` picks the status of each verified request;
/// invalid ones get 401. `on_webhook` sees every POST with the status it got.
pub async fn serve(
    listener: TcpListener,
    secret: Secret,
    answer: impl Fn(&Webhook) -> StatusCode + Send + Sync + 'static,
    on_webhook: impl Fn(&Webhook, StatusCode) + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> Result<()> {
    let inner = Arc::new(Inner {
        secret,
        answer: Box::new(answer),
        on_webhook: Box::new(on_webhook),
        seen: Mutex::new(HashMap::new()),
    });
    let app = axum::Router::new().fallback(handle).with_state(inner);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the webhook receiver")
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "this receiver takes webhooks: POST only\n",
        )
            .into_response();
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = text("webhook-id");
    let timestamp = text("webhook-timestamp");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let verified = sign::verify(
        &inner.secret,
        id.as_deref(),
        timestamp.as_deref(),
        text("webhook-signature").as_deref(),
        &body,
        now,
    );
    let delivery = match &id {
        None => 1,
        Some(id) => {
            // Poisoned only if a callback panicked while holding it, which
            // none does: the lock covers this block alone.
            let mut seen = inner
                .seen
                .lock()
                .expect("the seen-ids lock is never poisoned");
            if seen.len() >= REMEMBERED_IDS && !seen.contains_key(id) {
                seen.clear();
            }
            let n = seen.entry(id.clone()).or_insert(0);
            *n += 1;
            *n
        }
    };
    let webhook = Webhook {
        received_at: chrono::Local::now(),
        path: uri.path().to_owned(),
        id,
        timestamp,
        verified,
        delivery,
        body,
    };
    let (status, reply) = match &webhook.verified {
        Ok(()) => {
            let status = (inner.answer)(&webhook);
            let reply = if status.is_success() {
                "ok\n".to_owned()
            } else {
                format!(
                    "answered {} on purpose (rehearsing a failure)\n",
                    status.as_u16()
                )
            };
            (status, reply)
        }
        Err(why) => (
            StatusCode::UNAUTHORIZED,
            format!("invalid signature: {why}\n"),
        ),
    };
    (inner.on_webhook)(&webhook, status);
    (status, reply).into_response()
}

/// `outbox-relay receive`: binds 127.0.0.1:`port`, prints the URL first,
/// then each webhook, until SIGINT or SIGTERM.
pub async fn run_until_signal(port: u16, secret: Secret, status: StatusCode) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a signal sent as soon as the URL is printed must already
    // mean "stop cleanly", not the default "die".
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("listening on http://{addr}/ (any path)");
    println!(
        "verifying Standard Webhooks signatures; answering {} to valid requests, 401 to invalid ones; Ctrl-C to stop",
        status.as_u16()
    );

    let shutdown = CancellationToken::new();
    let mut server = tokio::spawn(serve(
        listener,
        secret,
        move |_| status,
        |w, s| print!("{}", pretty(w, s)),
        shutdown.clone(),
    ));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        r = &mut server => return r.context("the receiver task failed")?,
    }
    println!("stopping");
    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(r) => r.context("the receiver task failed")?,
        // A client holding a connection open does not keep us from exiting.
        Err(_) => {
            server.abort();
            Ok(())
        }
    }
}

/// A webhook as `receive` prints it: a header line, the verdict, the body
/// (pretty JSON, or text), and a blank line.
pub fn pretty(w: &Webhook, status: StatusCode) -> String {
    let mut out = format!(
        "{}  POST {}  webhook-id {}",
        w.received_at.format("%Y-%m-%d %H:%M:%S%.3f"),
        w.path,
        w.id.as_deref().unwrap_or("(missing)"),
    );
    if w.delivery > 1 {
        out.push_str(&format!("  (delivery {} of this id)", w.delivery));
    }
    out.push('\n');
    match &w.verified {
        Ok(()) => out.push_str("  signature: verified\n"),
        Err(why) => out.push_str(&format!("  signature: NOT verified ({why})\n")),
    }
    out.push_str(&format!("  answered:  {status}\n"));
    let body = match w.json() {
        Some(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        None if w.body.is_empty() => "(empty body)".to_owned(),
        None => {
            let shown = &w.body[..w.body.len().min(PRINTED_BODY_BYTES)];
            let mut text = String::from_utf8_lossy(shown).into_owned();
            if w.body.len() > shown.len() {
                text.push_str(&format!("\n... ({} bytes in all)", w.body.len()));
            }
            text
        }
    };
    for line in body.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(body: &str, verified: Result<(), VerifyError>, delivery: usize) -> Webhook {
        Webhook {
            received_at: chrono::Local::now(),
            path: "/hook".into(),
            id: Some("evt_1".into()),
            timestamp: Some("1".into()),
            verified,
            delivery,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn pretty_shows_the_verdict_and_indented_json() {
        let w = webhook(r#"{"eventCode":"add_credits","n":1}"#, Ok(()), 2);
        let text = pretty(&w, StatusCode::OK);
        assert!(
            text.contains("webhook-id evt_1  (delivery 2 of this id)"),
            "{text}"
        );
        assert!(text.contains("signature: verified\n"), "{text}");
        assert!(text.contains("answered:  200 OK"), "{text}");
        assert!(
            text.contains("\n    \"eventCode\": \"add_credits\",\n"),
            "{text}"
        );
        assert_eq!(w.event_code().as_deref(), Some("add_credits"));

        let bad = webhook("not json", Err(VerifyError::NoMatch), 1);
        let text = pretty(&bad, StatusCode::UNAUTHORIZED);
        assert!(
            text.contains("NOT verified (no signature matches)"),
            "{text}"
        );
        assert!(text.contains("  not json\n"), "{text}");
        assert!(!text.contains("delivery"), "{text}");
        assert_eq!(bad.event_code(), None);
    }
}
