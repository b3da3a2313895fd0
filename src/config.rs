//! The config file (TOML): parsing, defaults and `validate()`. Every default is a
//! named constant below, and `docs/configuration.md` lists them all.
//!
//! Values are checked while they are parsed (durations, URLs, event codes,
//! secrets), so a bad value is reported with the line it stands on. Error
//! messages never repeat a secret, a header value or a URL's password.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod files;
mod http;
mod values;
pub use http::{HttpSettings, PemFile, Proxy};
pub use values::{ApiToken, Secret};
use values::{Dur, EventCodeName, HttpUrl, Keep, PauseAfter, SecretText, TokenText};

/// Where the metrics, health and status API listen when `listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9187";
/// How often the relay scans for due rows even when no NOTIFY arrived.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a claimed row stays `in_flight` before another relay may take it back.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Most rows one claim statement takes for one endpoint.
pub const DEFAULT_CLAIM_BATCH: u32 = 200;
/// How long SIGINT/SIGTERM waits for requests in flight before releasing them.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Total deadline of one attempt: connect, send, headers and body excerpt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before a row becomes `dead`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// First retry delay; doubles each attempt, jittered.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(5);
/// Cap of the backoff.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60 * 60);
/// Concurrent requests to one endpoint.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 32;
/// Statuses that end delivery at once (the receiver said the endpoint is gone).
pub const DEFAULT_NO_RETRY_STATUSES: &[u16] = &[410];
/// How long every attempt to an endpoint must have failed before the circuit
/// breaker pauses it. Five minutes: long enough that a deploy or a brief
/// network fault never trips it, short enough that with the default backoff
/// (5 s doubling) a row has used about six of its eight attempts by then, so
/// an outage pauses the endpoint before its rows start turning `dead`.
pub const DEFAULT_PAUSE_AFTER: Duration = Duration::from_secs(5 * 60);
/// How often a paused endpoint is probed with its oldest pending event:
/// a receiver that is back waits at most this long, and a receiver that is
/// still down gets two requests a minute from all relays together.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// The word that turns the circuit breaker off for an endpoint.
pub const BREAKER_OFF: &str = "off";
/// Event codes the reference triggers (sql/triggers.sql) emit.
pub const BUILTIN_EVENTS: &[&str] = &["user_credits_zero", "post_code_change", "add_credits"];

/// Delivered rows older than this (by `delivered_at`) are removed by retention.
pub const DEFAULT_RETENTION_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
/// Attempts older than this (by start time) are removed by retention.
pub const DEFAULT_RETENTION_ATTEMPTS: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most rows one retention statement deletes.
pub const DEFAULT_RETENTION_BATCH: u32 = 5000;
/// How often retention looks for rows to remove.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// The word that turns a retention age off (keep the rows forever).
pub const KEEP_FOREVER: &str = "forever";
/// An API token has at least this many characters.
pub const API_TOKEN_MIN_CHARS: usize = 16;
/// Prefix of every Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A config problem, already worded for the operator (file, line, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole config file, after defaults and validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Option<String>,
    /// A direct connection for LISTEN when `database_url` goes through a pooler.
    pub listen_database_url: Option<String>,
    /// `pooler = "transaction"`: `database_url` is a pooler in transaction
    /// mode (no named statements, no session settings, no LISTEN on it).
    pub pooled: bool,
    pub listen: SocketAddr,
    pub relay_name: Option<String>,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub claim_batch: u32,
    pub shutdown_timeout: Duration,
    pub retention: RetentionConfig,
    /// The SSRF guard (`[ssrf_guard] enabled = true`): None when off.
    pub ssrf_guard: Option<crate::ssrf::Guard>,
    /// Bearer token that may read every endpoint's events (status API).
    pub api_admin_token: Option<ApiToken>,
    /// `[http]`: trust roots, client certificate and proxy of every endpoint
    /// that does not set its own.
    pub http: HttpSettings,
    pub endpoints: Vec<EndpointConfig>,
}

/// The `[retention]` table: how long history is kept. `None` keeps it forever.
/// Dead rows are never removed by retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    pub delivered: Option<Duration>,
    pub attempts: Option<Duration>,
    pub batch: u32,
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            delivered: Some(DEFAULT_RETENTION_DELIVERED),
            attempts: Some(DEFAULT_RETENTION_ATTEMPTS),
            batch: DEFAULT_RETENTION_BATCH,
            interval: DEFAULT_RETENTION_INTERVAL,
        }
    }
}

/// How an endpoint's events are ordered (docs/delivery.md, "Order").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Events that share an `ordering_key` go one at a time, in commit order.
    #[default]
    Key,
    /// No order: every event goes as soon as a slot is free.
    None,
}

/// One `[[endpoint]]` table.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub name: String,
    pub ordering: Ordering,
    pub url: url::Url,
    pub events: Vec<String>,
    /// The current secret first, then `previous_secrets`; each signs every request.
    pub secrets: Vec<Secret>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Requests per second; `None` is unlimited.
    pub rate_limit: Option<f64>,
    pub burst: u32,
    pub max_in_flight: u32,
    pub headers: Vec<(String, String)>,
    pub enabled: bool,
    pub no_retry_statuses: Vec<u16>,
    /// Bearer token that may read this endpoint's events (status API).
    pub api_token: Option<ApiToken>,
    /// The circuit breaker: pause after every attempt failed this long;
    /// `None` is off.
    pub pause_after: Option<Duration>,
    /// While paused (by the breaker), one probe this often.
    pub probe_interval: Duration,
    /// Its own `ca_file`, `client_cert`/`client_key` or `proxy`, merged over
    /// `[http]`; None when it sets none of them.
    pub http: Option<HttpSettings>,
}

impl EndpointConfig {
    /// The URL as it may be shown or stored: any password replaced.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Replaces a URL's password (if any) so it can be logged or stored.
pub fn redact_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // set_password only fails for URLs that cannot have credentials, which
        // is not the case here since one is present.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

// ---------------------------------------------------------------------------
// The file as written. Value types check themselves while parsing so that the
// TOML parser reports their line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database_url: Option<String>,
    database_url_file: Option<Spanned<String>>,
    listen_database_url: Option<String>,
    listen_database_url_file: Option<Spanned<String>>,
    pooler: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    relay_name: Option<String>,
    poll_interval: Option<Dur>,
    lease: Option<Spanned<Dur>>,
    claim_batch: Option<Spanned<u32>>,
    shutdown_timeout: Option<Dur>,
    retention: Option<RawRetention>,
    ssrf_guard: Option<RawSsrfGuard>,
    http: Option<http::RawHttp>,
    api_admin_token: Option<Spanned<TokenText>>,
    api_admin_token_env: Option<Spanned<String>>,
    api_admin_token_file: Option<Spanned<String>>,
    #[serde(default)]
    extra_events: Vec<EventCodeName>,
    #[serde(default)]
    endpoint: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: Spanned<String>,
    url: HttpUrl,
    events: Spanned<Vec<EventCodeName>>,
    secret: Option<SecretText>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    #[serde(default)]
    previous_secrets: Vec<SecretText>,
    timeout: Option<Spanned<Dur>>,
    max_attempts: Option<Spanned<u32>>,
    retry_initial: Option<Dur>,
    retry_max: Option<Spanned<Dur>>,
    rate_limit: Option<Spanned<f64>>,
    burst: Option<Spanned<u32>>,
    max_in_flight: Option<Spanned<u32>>,
    ordering: Option<Ordering>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    enabled: Option<bool>,
    no_retry_statuses: Option<Vec<Spanned<u16>>>,
    api_token: Option<Spanned<TokenText>>,
    api_token_env: Option<Spanned<String>>,
    api_token_file: Option<Spanned<String>>,
    pause_after: Option<PauseAfter>,
    probe_interval: Option<Spanned<Dur>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsrfGuard {
    enabled: Option<bool>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    delivered: Option<Keep>,
    attempts: Option<Keep>,
    batch: Option<Spanned<u32>>,
    interval: Option<Spanned<Dur>>,
}

// ---------------------------------------------------------------------------

impl Config {
    /// Reads and validates a config file. Environment variables named by
    /// `secret_env` are read from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Config::parse_in(
            &text,
            &path.display().to_string(),
            &|name| std::env::var(name).ok(),
            &files::base_dir(path),
        )
    }

    /// Parses and validates config text. `origin` names the file in messages;
    /// `env` looks up environment variables (injected so tests need not touch
    /// the process environment).
    /// Files named in the text (`secret_file`, ...) are read relative to the
    /// working directory.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_in(text, origin, env, Path::new("."))
    }

    /// As [`Config::parse`], with relative file names read from `base` (the
    /// config file's directory).
    pub fn parse_in(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
        base: &Path,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            ConfigError(located(text, origin, at, e.message().trim_end()))
        })?;
        let err = |at: usize, msg: String| ConfigError(located(text, origin, Some(at), &msg));

        let listen = match &raw.listen {
            None => DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid socket address"),
            Some(l) => l.get_ref().parse().map_err(|_| {
                err(
                    l.span().start,
                    format!(
                        "{:?} is not an address such as \"127.0.0.1:9187\"",
                        l.get_ref()
                    ),
                )
            })?,
        };

        let mut known_events: HashSet<String> =
            BUILTIN_EVENTS.iter().map(|s| s.to_string()).collect();
        known_events.extend(raw.extra_events.iter().map(|e| e.0.clone()));

        let mut endpoints = Vec::with_capacity(raw.endpoint.len());
        let mut names = HashSet::new();
        // Every API token with where it was given, to refuse duplicates.
        let mut tokens: Vec<(ApiToken, usize)> = Vec::new();
        let admin_token = token_or_env(
            raw.api_admin_token,
            raw.api_admin_token_env.as_ref(),
            raw.api_admin_token_file.as_ref(),
            base,
            "",
            env,
            &err,
        )?;
        tokens.extend(admin_token.clone());
        let relay_http = http::relay_wide(raw.http, base, &err)?;
        for ep in raw.endpoint {
            let name_at = ep.name.span().start;
            let name = ep.name.into_inner();
            if name.trim().is_empty() || name.len() > 100 {
                return Err(err(
                    name_at,
                    "an endpoint name must be 1 to 100 characters".into(),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(err(name_at, format!("duplicate endpoint name {name:?}")));
            }
            let events_at = ep.events.span().start;
            let events: Vec<String> = ep.events.into_inner().into_iter().map(|e| e.0).collect();
            if events.is_empty() {
                return Err(err(
                    events_at,
                    format!("endpoint {name:?}: list at least one event code"),
                ));
            }
            if let Some(unknown) = events.iter().find(|e| !known_events.contains(*e)) {
                return Err(err(
                    events_at,
                    format!(
                        "endpoint {name:?}: unknown event code {unknown:?} \
                         (known: {}; declare your own in extra_events)",
                        sorted(&known_events).join(", ")
                    ),
                ));
            }

            let mut secrets = Vec::new();
            let given = [
                ep.secret.as_ref().map(|_| "secret"),
                ep.secret_env.as_ref().map(|_| "secret_env"),
                ep.secret_file.as_ref().map(|_| "secret_file"),
            ];
            let given: Vec<&str> = given.into_iter().flatten().collect();
            if given.len() > 1 {
                let at = ep
                    .secret_file
                    .as_ref()
                    .or(ep.secret_env.as_ref())
                    .map_or(name_at, |k| k.span().start);
                return Err(err(
                    at,
                    format!(
                        "endpoint {name:?}: give one of \"secret\", \"secret_env\" or \"secret_file\", not both {}",
                        given.join(" and ")
                    ),
                ));
            }
            match (ep.secret, &ep.secret_env, &ep.secret_file) {
                (Some(s), _, _) => secrets.push(s.0),
                (None, Some(env_key), _) => {
                    let var = env_key.get_ref();
                    let value = env(var).ok_or_else(|| {
                        err(
                            env_key.span().start,
                            format!("endpoint {name:?}: environment variable {var} is not set"),
                        )
                    })?;
                    let secret = Secret::parse(value.trim()).map_err(|e| {
                        err(
                            env_key.span().start,
                            format!("endpoint {name:?}: environment variable {var} holds an invalid secret: {e}"),
                        )
                    })?;
                    secrets.push(secret);
                }
                (None, None, Some(file)) => {
                    let at = file.span().start;
                    let path = files::resolve(base, file.get_ref());
                    let value = files::read_secret_text(&path)
                        .map_err(|e| err(at, format!("endpoint {name:?}: {e}")))?;
                    let secret = Secret::parse(&value).map_err(|e| {
                        err(
                            at,
                            format!(
                                "endpoint {name:?}: {} holds an invalid secret: {e}",
                                path.display()
                            ),
                        )
                    })?;
                    secrets.push(secret);
                }
                (None, None, None) => {
                    return Err(err(
                        name_at,
                        format!("endpoint {name:?}: \"secret\", \"secret_env\" or \"secret_file\" is required"),
                    ))
                }
            }
            secrets.extend(ep.previous_secrets.into_iter().map(|s| s.0));

            let timeout = ep
                .timeout
                .as_ref()
                .map_or(DEFAULT_TIMEOUT, |d| d.get_ref().0);
            if let Some(t) = &ep.timeout {
                if t.get_ref().0.is_zero() {
                    return Err(err(
                        t.span().start,
                        format!("endpoint {name:?}: must be more than 0"),
                    ));
                }
            }
            let max_attempts = match &ep.max_attempts {
                None => DEFAULT_MAX_ATTEMPTS,
                Some(m) if *m.get_ref() == 0 => {
                    return Err(err(
                        m.span().start,
                        format!("endpoint {name:?}: must be at least 1"),
                    ))
                }
                Some(m) => *m.get_ref(),
            };
            let retry_initial = ep.retry_initial.map_or(DEFAULT_RETRY_INITIAL, |d| d.0);
            let retry_max = ep
                .retry_max
                .as_ref()
                .map_or(DEFAULT_RETRY_MAX, |d| d.get_ref().0);
            if retry_max < retry_initial {
                let at = ep.retry_max.as_ref().map_or(name_at, |d| d.span().start);
                return Err(err(
                    at,
                    format!("endpoint {name:?}: must not be less than retry_initial"),
                ));
            }
            let rate_limit = match &ep.rate_limit {
                None => None,
                Some(r) if !(r.get_ref().is_finite() && *r.get_ref() > 0.0) => {
                    return Err(err(
                        r.span().start,
                        format!(
                            "endpoint {name:?}: must be a number of requests per second above 0"
                        ),
                    ))
                }
                Some(r) => Some(*r.get_ref()),
            };
            let burst = match &ep.burst {
                Some(b) if *b.get_ref() == 0 => {
                    return Err(err(
                        b.span().start,
                        format!("endpoint {name:?}: must be at least 1"),
                    ))
                }
                Some(b) if rate_limit.is_none() => {
                    return Err(err(
                        b.span().start,
                        format!("endpoint {name:?}: only means something with rate_limit"),
                    ))
                }
                Some(b) => *b.get_ref(),
                // One second's worth of requests, at least one.
                None => rate_limit.map_or(1, |r| r.ceil().max(1.0) as u32),
            };
            let max_in_flight = match &ep.max_in_flight {
                None => DEFAULT_MAX_IN_FLIGHT,
                Some(m) if *m.get_ref() == 0 || *m.get_ref() > 10_000 => {
                    return Err(err(
                        m.span().start,
                        format!("endpoint {name:?}: must be 1 to 10000"),
                    ))
                }
                Some(m) => *m.get_ref(),
            };
            let mut headers = Vec::new();
            for (key, value) in ep.headers {
                let at = value.span().start;
                if reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
                    return Err(err(
                        at,
                        format!("endpoint {name:?}: {key:?} is not a valid header name"),
                    ));
                }
                if is_reserved_header(&key) {
                    return Err(err(
                        at,
                        format!("endpoint {name:?}: {key:?} is set by the relay and cannot be overridden"),
                    ));
                }
                if reqwest::header::HeaderValue::from_str(value.get_ref()).is_err() {
                    return Err(err(
                        at,
                        format!(
                            "endpoint {name:?}: the value of {key:?} is not a valid header value"
                        ),
                    ));
                }
                headers.push((key, value.into_inner()));
            }
            let no_retry_statuses = match ep.no_retry_statuses {
                None => DEFAULT_NO_RETRY_STATUSES.to_vec(),
                Some(list) => {
                    let mut out = Vec::new();
                    for s in list {
                        let code = *s.get_ref();
                        if !(100..=599).contains(&code) || (200..300).contains(&code) {
                            return Err(err(
                                s.span().start,
                                format!("endpoint {name:?}: {code} is not a non-2xx HTTP status"),
                            ));
                        }
                        out.push(code);
                    }
                    out
                }
            };

            let api_token = token_or_env(
                ep.api_token,
                ep.api_token_env.as_ref(),
                ep.api_token_file.as_ref(),
                base,
                &format!("endpoint {name:?}: "),
                env,
                &err,
            )?;
            tokens.extend(api_token.clone());
            let ep_http = http::for_endpoint(
                &http::RawEndpointHttp {
                    ca_file: ep.ca_file,
                    client_cert: ep.client_cert,
                    client_key: ep.client_key,
                    proxy: ep.proxy,
                },
                &relay_http,
                &name,
                base,
                &err,
            )?;

            let pause_after = ep.pause_after.map_or(Some(DEFAULT_PAUSE_AFTER), |p| p.0);
            let probe_interval = match &ep.probe_interval {
                None => DEFAULT_PROBE_INTERVAL,
                Some(p) if p.get_ref().0 < Duration::from_millis(100) => {
                    return Err(err(
                        p.span().start,
                        format!("endpoint {name:?}: must be at least 100ms"),
                    ))
                }
                Some(p) => p.get_ref().0,
            };

            endpoints.push(EndpointConfig {
                name,
                ordering: ep.ordering.unwrap_or_default(),
                url: ep.url.0,
                events,
                secrets,
                timeout,
                max_attempts,
                retry_initial,
                retry_max,
                rate_limit,
                burst,
                max_in_flight,
                headers,
                enabled: ep.enabled.unwrap_or(true),
                no_retry_statuses,
                api_token: api_token.map(|(t, _)| t),
                pause_after,
                probe_interval,
                http: ep_http,
            });
        }

        // A token must say who is asking, so each one is unique.
        for (i, (token, at)) in tokens.iter().enumerate() {
            if tokens[..i].iter().any(|(other, _)| other == token) {
                return Err(err(
                    *at,
                    "this API token is already given to another endpoint or as the admin token; give each its own"
                        .into(),
                ));
            }
        }

        let retention = match raw.retention {
            None => RetentionConfig::default(),
            Some(r) => {
                let batch = match &r.batch {
                    None => DEFAULT_RETENTION_BATCH,
                    Some(b) if *b.get_ref() == 0 || *b.get_ref() > 100_000 => {
                        return Err(err(b.span().start, "must be 1 to 100000".into()))
                    }
                    Some(b) => *b.get_ref(),
                };
                let interval = match &r.interval {
                    None => DEFAULT_RETENTION_INTERVAL,
                    Some(i) if i.get_ref().0.is_zero() => {
                        return Err(err(i.span().start, "must be more than 0".into()))
                    }
                    Some(i) => i.get_ref().0,
                };
                RetentionConfig {
                    delivered: r
                        .delivered
                        .map_or(Some(DEFAULT_RETENTION_DELIVERED), |k| k.0),
                    attempts: r.attempts.map_or(Some(DEFAULT_RETENTION_ATTEMPTS), |k| k.0),
                    batch,
                    interval,
                }
            }
        };

        let lease = raw.lease.as_ref().map_or(DEFAULT_LEASE, |l| l.get_ref().0);
        // A claimed row waits at most for its turn under the rate limit (it
        // already holds an in-flight slot) and then for one attempt. The lease
        // must outlast that, or a second relay would send the row again.
        for ep in &endpoints {
            let queue_wait = ep
                .rate_limit
                .map_or(0.0, |r| f64::from(ep.max_in_flight) / r);
            let needed = ep.timeout.as_secs_f64() + queue_wait + 5.0;
            if lease.as_secs_f64() < needed {
                let at = raw.lease.as_ref().map_or(0, |l| l.span().start);
                return Err(err(
                    at,
                    format!(
                        "{} is too short for endpoint {:?}, whose timeout plus rate-limit wait needs at least {}s",
                        humantime::format_duration(lease),
                        ep.name,
                        needed.ceil()
                    ),
                ));
            }
        }

        let claim_batch = match &raw.claim_batch {
            None => DEFAULT_CLAIM_BATCH,
            Some(c) if *c.get_ref() == 0 || *c.get_ref() > 10_000 => {
                return Err(err(c.span().start, "must be 1 to 10000".into()))
            }
            Some(c) => *c.get_ref(),
        };

        let ssrf_guard = match raw.ssrf_guard {
            Some(g) if g.enabled.unwrap_or(true) => {
                let mut allow = Vec::new();
                for entry in g.allow {
                    let text = entry.get_ref().trim();
                    let net = text
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            err(
                                entry.span().start,
                                format!("ssrf_guard.allow: {text:?} is not an address or network such as \"10.0.0.0/8\""),
                            )
                        })?;
                    allow.push(net);
                }
                Some(crate::ssrf::Guard { allow })
            }
            _ => None,
        };

        let database_url = match (raw.database_url, raw.database_url_file) {
            (Some(_), Some(file)) => {
                return Err(err(
                    file.span().start,
                    "give \"database_url\" or \"database_url_file\", not both".into(),
                ))
            }
            (url, None) => url,
            (None, Some(file)) => Some(
                files::read_secret_text(&files::resolve(base, file.get_ref()))
                    .map_err(|e| err(file.span().start, e))?,
            ),
        };

        let listen_database_url = match (raw.listen_database_url, raw.listen_database_url_file) {
            (Some(_), Some(file)) => {
                return Err(err(
                    file.span().start,
                    "give \"listen_database_url\" or \"listen_database_url_file\", not both".into(),
                ))
            }
            (url, None) => url,
            (None, Some(file)) => Some(
                files::read_secret_text(&files::resolve(base, file.get_ref()))
                    .map_err(|e| err(file.span().start, e))?,
            ),
        };
        let pooled = match raw
            .pooler
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span().start))
        {
            None | Some(("none" | "session", _)) => false,
            Some(("transaction", _)) => true,
            Some((other, at)) => {
                return Err(err(
                    at,
                    format!(
                        "pooler must be \"none\", \"session\" or \"transaction\", not {other:?}"
                    ),
                ))
            }
        };

        Ok(Config {
            database_url,
            listen_database_url,
            pooled,
            listen,
            relay_name: raw.relay_name,
            poll_interval: raw.poll_interval.map_or(DEFAULT_POLL_INTERVAL, |d| d.0),
            lease,
            claim_batch,
            shutdown_timeout: raw
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
            retention,
            ssrf_guard,
            api_admin_token: admin_token.map(|(t, _)| t),
            http: relay_http,
            endpoints,
        })
    }

    /// The database URL by precedence: command-line flag, then `DATABASE_URL`,
    /// then the file.
    pub fn resolve_database_url(
        &self,
        flag: Option<&str>,
        env: Option<&str>,
    ) -> Result<String, ConfigError> {
        flag.or(env)
            .or(self.database_url.as_deref())
            .map(str::to_owned)
            .ok_or_else(|| {
                ConfigError(
                    "no database: set database_url in the config file, DATABASE_URL, or --database-url"
                        .into(),
                )
            })
    }
}

/// Only the `database_url` of a config file, for commands that need nothing
/// else (`status`, `replay`): they must work on a DBA's machine where the
/// endpoints' secret environment variables are not set. The file must still
/// be valid TOML.
pub fn database_url_from_file(path: &Path) -> Result<Option<String>, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {origin}: {e}")))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| s.start);
        ConfigError(located(&text, &origin, at, e.message().trim_end()))
    })?;
    match (table.get("database_url"), table.get("database_url_file")) {
        (None, None) => Ok(None),
        (Some(toml::Value::String(url)), None) => Ok(Some(url.clone())),
        (None, Some(toml::Value::String(file))) => {
            files::read_secret_text(&files::resolve(&files::base_dir(path), file))
                .map(Some)
                .map_err(|e| ConfigError(format!("{origin} (database_url_file): {e}")))
        }
        (Some(_), Some(_)) => Err(ConfigError(format!(
            "{origin}: give \"database_url\" or \"database_url_file\", not both"
        ))),
        _ => Err(ConfigError(format!(
            "{origin}: database_url and database_url_file must be strings"
        ))),
    }
}

/// An API token given inline, by the name of an environment variable or by
/// a file (only one). `prefix` names the endpoint in messages. Returns the
/// token and where it was given.
fn token_or_env(
    inline: Option<Spanned<TokenText>>,
    env_key: Option<&Spanned<String>>,
    file: Option<&Spanned<String>>,
    base: &Path,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
    err: &dyn Fn(usize, String) -> ConfigError,
) -> Result<Option<(ApiToken, usize)>, ConfigError> {
    let inline_at = inline.as_ref().map(|t| t.span().start);
    let ways = [
        inline_at,
        env_key.map(|k| k.span().start),
        file.map(|f| f.span().start),
    ];
    if let Some(second) = ways.iter().flatten().nth(1) {
        return Err(err(
            *second,
            format!(
                "{prefix}give the API token inline, by environment variable or by file, not both"
            ),
        ));
    }
    if let Some(t) = inline {
        let at = t.span().start;
        return Ok(Some((t.into_inner().0, at)));
    }
    if let Some(key) = env_key {
        let var = key.get_ref();
        let at = key.span().start;
        let value = env(var)
            .ok_or_else(|| err(at, format!("{prefix}environment variable {var} is not set")))?;
        let token = ApiToken::parse(value.trim()).map_err(|e| {
            err(
                at,
                format!("{prefix}environment variable {var} holds an invalid API token: {e}"),
            )
        })?;
        return Ok(Some((token, at)));
    }
    if let Some(file) = file {
        let at = file.span().start;
        let path = files::resolve(base, file.get_ref());
        let value = files::read_secret_text(&path).map_err(|e| err(at, format!("{prefix}{e}")))?;
        let token = ApiToken::parse(&value).map_err(|e| {
            err(
                at,
                format!("{prefix}{} holds an invalid API token: {e}", path.display()),
            )
        })?;
        return Ok(Some((token, at)));
    }
    Ok(None)
}

/// The default config path when `--config` is not given.
pub fn default_path() -> PathBuf {
    PathBuf::from("relay.toml")
}

fn sorted(set: &HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().cloned().collect();
    v.sort();
    v
}

/// Headers the relay sets itself on every request.
fn is_reserved_header(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "transfer-encoding",
        "connection",
    ];
    RESERVED.contains(&name.to_ascii_lowercase().as_str())
}

/// "relay.toml line 7 (secret): message" — the key is taken from the line's
/// left-hand side; the value is never echoed, as it may be a secret.
fn located(text: &str, origin: &str, at: Option<usize>, message: &str) -> String {
    // One line per message: the TOML parser words some errors on two.
    let message = message.trim().replace('\n', ", ");
    let Some(at) = at.filter(|&a| a <= text.len()) else {
        return format!("{origin}: {message}");
    };
    let line_no = text[..at].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    // Only the bare key at the start of the line: on a mangled line the left
    // of '=' can hold a value (two lines run together), and values may be secrets.
    let key = line
        .split_once('=')
        .map(|(k, _)| {
            let k = k.trim_start();
            let end = k
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
                .unwrap_or(k.len());
            &k[..end]
        })
        .filter(|k| !k.is_empty());
    match key {
        Some(k) => format!("{origin} line {line_no} ({k}): {message}"),
        None => format!("{origin} line {line_no}: {message}"),
    }
}

#[cfg(test)]
mod tests;
