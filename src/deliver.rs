//! One attempt: sign, POST, read a bounded excerpt of the answer, all under the
//! endpoint's total deadline. A failure is data (an [`Attempt`] with an error),
//! never an `Err`.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::config::EndpointConfig;
use crate::{retry, sign};

/// Most bytes of a response body kept (on the row and in webhook.attempts);
/// the rest is never read.
pub const RESPONSE_EXCERPT_BYTES: usize = 4096;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("outbox-relay/", env!("CARGO_PKG_VERSION"));

/// What one attempt gave.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started_at: SystemTime,
    pub elapsed: Duration,
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// Excerpt of the response body (lossy UTF-8, NULs removed).
    pub body: Option<String>,
    /// Why the attempt failed; None for a 2xx.
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Attempt {
    pub fn delivered(&self) -> bool {
        self.error.is_none()
    }

    /// The kind of result, for metrics: the status class (`2xx` .. `5xx`),
    /// or without a response `timeout`, `connection` (refused, DNS, TLS,
    /// the SSRF guard) or `other`.
    pub fn class(&self) -> &'static str {
        match self.status {
            Some(s) => match s / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            },
            None => {
                let error = self.error.as_deref().unwrap_or("");
                if error.starts_with("timed out") {
                    "timeout"
                } else if error.starts_with("connection failed") {
                    "connection"
                } else {
                    "other"
                }
            }
        }
    }
}

/// Static headers of an endpoint, built once (values were validated with the config).
pub fn static_headers(ep: &EndpointConfig) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in &ep.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.insert(n, v);
        }
    }
    map
}

/// Makes one attempt to deliver `body` as event `event_id`.
pub async fn attempt(
    route: &crate::egress::Route,
    ep: &EndpointConfig,
    headers: &HeaderMap,
    guard: Option<&crate::ssrf::Guard>,
    event_id: &str,
    body: String,
) -> Attempt {
    let started_at = SystemTime::now();
    let start = Instant::now();
    // IP literals never reach the resolver, so the guard checks them here;
    // and a name a proxy will resolve is checked here too.
    if let Some(guard) = guard {
        let refused = match ep.url.host() {
            Some(url::Host::Ipv4(ip)) => guard.check(ip.into()).err(),
            Some(url::Host::Ipv6(ip)) => guard.check(ip.into()).err(),
            Some(url::Host::Domain(name)) if route.proxied => {
                match tokio::time::timeout(ep.timeout, crate::ssrf::check_name(guard, name)).await {
                    Ok(result) => result.err(),
                    Err(_) => Some(format!("{name}: resolving timed out")),
                }
            }
            None | Some(url::Host::Domain(_)) => None,
        };
        if let Some(why) = refused {
            return Attempt {
                started_at,
                elapsed: start.elapsed(),
                status: None,
                body: None,
                error: Some(format!("connection failed: {why}")),
                retry_after: None,
            };
        }
    }
    let timestamp = started_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature = sign::signature_header(&ep.secrets, event_id, timestamp, body.as_bytes());
    let request = route
        .http
        .post(ep.url.clone())
        .headers(headers.clone())
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body);

    let exchange = async {
        let mut response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let mut excerpt = Vec::new();
        while excerpt.len() < RESPONSE_EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "HTTP {} but reading the body failed: {}",
                        status.as_u16(),
                        describe(&e)
                    ))
                }
            }
        }
        excerpt.truncate(RESPONSE_EXCERPT_BYTES);
        Ok((status, retry_after, excerpt))
    };

    let (status, body, error, retry_after) = match tokio::time::timeout(ep.timeout, exchange).await
    {
        Err(_) => (
            None,
            None,
            Some(format!(
                "timed out after {}",
                humantime::format_duration(ep.timeout)
            )),
            None,
        ),
        Ok(Err(error)) => (None, None, Some(error), None),
        Ok(Ok((status, retry_after, excerpt))) => {
            let text = String::from_utf8_lossy(&excerpt).replace('\0', "");
            let error = if status.is_success() {
                None
            } else if status.is_redirection() {
                Some(format!(
                    "HTTP {} (redirects are not followed)",
                    status.as_u16()
                ))
            } else {
                Some(format!("HTTP {}", status.as_u16()))
            };
            (Some(status.as_u16()), Some(text), error, retry_after)
        }
    };
    Attempt {
        started_at,
        elapsed: start.elapsed(),
        status,
        body,
        error,
        retry_after,
    }
}

/// A transport error in words, without the URL (it may carry credentials):
/// what failed, then the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "HTTP error"
    };
    // The chain below reqwest's own message says what really happened
    // ("dns error: failed to lookup address information: ...", "tcp connect
    // error: Connection refused"); hyper's "client error (Connect)" adds nothing.
    let mut parts: Vec<String> = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.starts_with("client error (") && parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = c.source();
    }
    if parts.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", parts.join(": "))
    }
}
