//! The benchmark's receiver, run as its own process: answers 200 (or after a
//! delay, per path), verifies every signature, counts unique webhook-ids, and
//! can record when each buyer's webhook arrived (for latency).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use outbox_relay::config::Secret;

#[derive(Default)]
struct Counts {
    requests: u64,
    bad_signatures: u64,
    ids: HashSet<String>,
    /// Requests per path ("fast", "slow", ...).
    per_kind: HashMap<String, u64>,
    /// buyerId -> receipt time (µs since the epoch), when recording.
    receipts: HashMap<String, u64>,
}

struct St {
    secret: Secret,
    slow_ms: u64,
    record: bool,
    counts: Mutex<Counts>,
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub async fn run(port: u16, secret: &str, slow_ms: u64, record: bool) -> anyhow::Result<()> {
    let st = Arc::new(St {
        secret: Secret::parse(secret).map_err(anyhow::Error::msg)?,
        slow_ms,
        record,
        counts: Mutex::new(Counts::default()),
    });
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/receipts", get(receipts))
        .route("/receipt/{key}", get(receipt))
        .route("/{kind}", post(hook))
        .with_state(st);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn hook(
    State(st): State<Arc<St>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = now_micros();
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let ok = outbox_relay::sign::verify(
        &st.secret,
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        &body,
        (at / 1_000_000) as i64,
    )
    .is_ok();
    {
        let mut c = st.counts.lock().expect("counts lock");
        c.requests += 1;
        if !ok {
            c.bad_signatures += 1;
        }
        *c.per_kind.entry(kind.clone()).or_insert(0) += 1;
        if let Some(id) = h("webhook-id") {
            c.ids.insert(id.to_string());
        }
        if st.record {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                if let Some(b) = v["buyerId"].as_str() {
                    c.receipts.entry(b.to_string()).or_insert(at);
                }
            }
        }
    }
    if kind == "slow" && st.slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(st.slow_ms)).await;
    }
    StatusCode::OK
}

async fn stats(State(st): State<Arc<St>>) -> Json<serde_json::Value> {
    let c = st.counts.lock().expect("counts lock");
    Json(serde_json::json!({
        "requests": c.requests, "unique": c.ids.len(), "bad_signatures": c.bad_signatures,
        "per_kind": c.per_kind,
    }))
}

async fn receipt(State(st): State<Arc<St>>, Path(key): Path<String>) -> Json<Option<u64>> {
    Json(
        st.counts
            .lock()
            .expect("counts lock")
            .receipts
            .get(&key)
            .copied(),
    )
}

async fn receipts(State(st): State<Arc<St>>) -> Json<HashMap<String, u64>> {
    Json(st.counts.lock().expect("counts lock").receipts.clone())
}
