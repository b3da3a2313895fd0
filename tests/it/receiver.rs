//! A real HTTP receiver on 127.0.0.1:0 for the tests: records every request,
//! answers as the test tells it, and checks Standard Webhooks signatures with
//! its own HMAC code (independent of the relay's src/sign.rs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// 1 for the first request with this webhook-id, 2 for the second, ...
    pub nth: usize,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// How to answer.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with extra headers (e.g. Retry-After).
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// Wait, then answer with the status.
    After(Duration, u16),
}

type Behaviour = Box<dyn Fn(&Received) -> Reply + Send + Sync>;

struct Inner {
    requests: Mutex<Vec<Received>>,
    seen: Mutex<HashMap<String, usize>>,
    behaviour: Behaviour,
}

pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver that answers 200 to everything.
    pub async fn ok() -> Receiver {
        Receiver::start(|_| Reply::Status(200)).await
    }

    /// A receiver that answers `status` to the first `n` requests of every
    /// webhook-id, then 200.
    pub async fn failing_first(n: usize, status: u16) -> Receiver {
        Receiver::start(move |r| Reply::Status(if r.nth <= n { status } else { 200 })).await
    }

    pub async fn start(behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::on(listener, behaviour).await
    }

    /// A receiver on a listener the test bound itself (e.g. a port that was
    /// refusing connections until now).
    pub async fn on(
        listener: tokio::net::TcpListener,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        Receiver::serve(listener, url, behaviour)
    }

    /// An HTTPS receiver on 127.0.0.1 with this TLS set-up (which may demand
    /// a client certificate). Its URL names `host` (`127.0.0.1` or
    /// `localhost`). Failed handshakes are counted in `refused`.
    pub async fn https(
        tls: Arc<rustls::ServerConfig>,
        host: &str,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> (Receiver, Arc<AtomicUsize>) {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{host}:{}/hook", tcp.local_addr().unwrap().port());
        let refused = Arc::new(AtomicUsize::new(0));
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            refused: refused.clone(),
        };
        (Receiver::serve(listener, url, behaviour), refused)
    }

    fn serve<L>(
        listener: L,
        url: String,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            behaviour: Box::new(behaviour),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            inner,
            _server: server,
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.inner.requests.lock().unwrap().len()
    }

    /// Waits (up to `timeout`) until at least `n` requests have come.
    pub async fn wait_count(&self, n: usize, what: &str, timeout: Duration) {
        crate::support::wait_for(what, timeout, || async {
            (self.count() >= n).then_some(())
        })
        .await
    }

    /// Distinct webhook-ids received.
    pub fn unique_ids(&self) -> usize {
        self.inner.seen.lock().unwrap().len()
    }

    /// webhook-ids received more than once.
    pub fn duplicates(&self) -> Vec<String> {
        self.inner
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let id = header("webhook-id");
    let nth = {
        let mut seen = inner.seen.lock().unwrap();
        let n = seen.entry(id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let received = Received {
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        headers: headers.clone(),
        body,
        at: Instant::now(),
        nth,
    };
    let reply = (inner.behaviour)(&received);
    inner.requests.lock().unwrap().push(received);
    match reply {
        Reply::Status(code) => status(code).into_response(),
        Reply::WithHeaders(code, extra) => {
            let mut response = status(code).into_response();
            for (name, value) in extra {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Reply::After(wait, code) => {
            tokio::time::sleep(wait).await;
            status(code).into_response()
        }
    }
}

fn status(code: u16) -> (StatusCode, String) {
    (
        StatusCode::from_u16(code).unwrap(),
        format!("answer {code}"),
    )
}

/// Checks a request's signature the way a receiver would, from first
/// principles: HMAC-SHA256 over "id.timestamp.body" with the decoded secret.
pub fn signature_is_valid(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    r.signature.split(' ').any(|s| s == expected)
}

/// TLS on top of a TCP listener, for axum: a failed handshake is counted and
/// the next connection accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    refused: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
