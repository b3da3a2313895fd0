//! The HTTP clients deliveries go out through: one for every endpoint that
//! keeps to `[http]`, one more per endpoint with its own trust roots, client
//! certificate or proxy. Proxies come from the config, else from the
//! conventional environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`). With the SSRF guard on, a proxy's own address is trusted
//! (it is the operator's config) and the receiver's addresses are checked
//! before the request is handed to the proxy (docs/security.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::config::{redact_url, Config, HttpSettings, Proxy};
use crate::ssrf::{Guard, GuardedResolver};

/// How one endpoint's requests leave.
#[derive(Clone)]
pub struct Route {
    pub http: reqwest::Client,
    /// Requests may go through a proxy, which resolves the receiver's name
    /// itself: the guard then checks the receiver's addresses first.
    pub proxied: bool,
}

/// Every endpoint's route.
pub struct Clients {
    shared: Route,
    own: HashMap<String, Route>,
}

impl Clients {
    /// Builds the clients; `env` reads the proxy variables (injected for tests).
    pub fn build(
        cfg: &Config,
        max_idle_per_host: usize,
        guard: Option<Arc<Guard>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Clients> {
        let shared = route(&cfg.http, max_idle_per_host, guard.clone(), env, "[http]")?;
        let mut own = HashMap::new();
        for ep in &cfg.endpoints {
            if let Some(settings) = &ep.http {
                let what = format!("endpoint {:?}", ep.name);
                own.insert(
                    ep.name.clone(),
                    route(settings, max_idle_per_host, guard.clone(), env, &what)?,
                );
            }
        }
        Ok(Clients { shared, own })
    }

    pub fn route(&self, endpoint: &str) -> &Route {
        self.own.get(endpoint).unwrap_or(&self.shared)
    }
}

/// The proxy variables, as curl and most HTTP clients read them: the
/// lower-case name first, then the upper-case one.
struct EnvProxies {
    https: Option<String>,
    http: Option<String>,
    no_proxy: Option<String>,
}

fn env_proxies(env: &dyn Fn(&str) -> Option<String>) -> EnvProxies {
    let first = |names: &[&str]| {
        names.iter().find_map(|n| {
            env(n)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
    };
    let all = first(&["all_proxy", "ALL_PROXY"]);
    EnvProxies {
        https: first(&["https_proxy", "HTTPS_PROXY"]).or_else(|| all.clone()),
        http: first(&["http_proxy", "HTTP_PROXY"]).or(all),
        no_proxy: first(&["no_proxy", "NO_PROXY"]),
    }
}

fn route(
    settings: &HttpSettings,
    max_idle_per_host: usize,
    guard: Option<Arc<Guard>>,
    env: &dyn Fn(&str) -> Option<String>,
    what: &str,
) -> Result<Route> {
    let mut builder = reqwest::Client::builder()
        .user_agent(crate::deliver::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        // Only the proxies chosen below; reqwest would read the environment itself.
        .no_proxy();
    for ca in &settings.ca {
        for cert in reqwest::Certificate::from_pem_bundle(&ca.pem)
            .with_context(|| format!("{what}: reading ca_file {}", ca.path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = &settings.identity {
        builder =
            builder.identity(reqwest::Identity::from_pem(&identity.pem).with_context(|| {
                format!("{what}: reading client_cert {}", identity.path.display())
            })?);
    }
    // Proxies by URL, for the guard's trust and for the log.
    let mut proxies: Vec<(reqwest::Proxy, String, String)> = Vec::new();
    match &settings.proxy {
        Proxy::Direct => {}
        Proxy::Url { url, no_proxy } => {
            let mut p = reqwest::Proxy::all(url.as_str())
                .with_context(|| format!("{what}: proxy {}", redact_url(url)))?;
            if !no_proxy.is_empty() {
                p = p.no_proxy(reqwest::NoProxy::from_string(&no_proxy.join(",")));
            }
            proxies.push((p, url_host(url), redact_url(url)));
        }
        Proxy::FromEnvironment => {
            let vars = env_proxies(env);
            let no_proxy = vars
                .no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string);
            for (text, https) in [(vars.https, true), (vars.http, false)] {
                let Some(text) = text else { continue };
                let parsed = url::Url::parse(&text)
                    .ok()
                    .filter(|u| u.host_str().is_some())
                    .with_context(|| {
                        format!(
                            "the {} proxy variable is not a URL such as http://proxy.internal:3128",
                            if https { "HTTPS_PROXY" } else { "HTTP_PROXY" }
                        )
                    })?;
                let p = if https {
                    reqwest::Proxy::https(parsed.as_str())
                } else {
                    reqwest::Proxy::http(parsed.as_str())
                }
                .with_context(|| format!("proxy {}", redact_url(&parsed)))?;
                proxies.push((
                    p.no_proxy(no_proxy.clone()),
                    url_host(&parsed),
                    redact_url(&parsed),
                ));
            }
        }
    }
    let proxied = !proxies.is_empty();
    let mut trusted = Vec::new();
    for (proxy, host, shown) in proxies {
        tracing::info!(clients = what, proxy = %shown, "requests go through a proxy");
        builder = builder.proxy(proxy);
        trusted.push(host);
    }
    if let Some(guard) = guard {
        // Host names resolve through the guard: only allowed addresses reach
        // the connector, so the check is on the address actually used. The
        // proxies' own names are trusted.
        builder = builder.dns_resolver(Arc::new(GuardedResolver { guard, trusted }));
    }
    let http = builder
        .build()
        .with_context(|| format!("{what}: building the HTTP client"))?;
    Ok(Route { http, proxied })
}

fn url_host(url: &url::Url) -> String {
    url.host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_variables_are_read_as_curl_reads_them() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://upper:3128".to_string()),
            "https_proxy" => Some("http://lower:3128".to_string()),
            "ALL_PROXY" => Some("http://all:3128".to_string()),
            "NO_PROXY" => Some("localhost,.internal".to_string()),
            _ => None,
        };
        let v = env_proxies(&env);
        assert_eq!(v.https.as_deref(), Some("http://lower:3128"));
        assert_eq!(v.http.as_deref(), Some("http://all:3128"));
        assert_eq!(v.no_proxy.as_deref(), Some("localhost,.internal"));
        let none = env_proxies(&|_| Some(" ".to_string()));
        assert!(none.https.is_none() && none.http.is_none() && none.no_proxy.is_none());
    }
}
