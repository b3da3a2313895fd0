//! The receivers' side of the network: extra trust roots (`ca_file`), client
//! certificates (`client_cert`, `client_key`) and egress proxies (`proxy`),
//! relay-wide in `[http]` and per endpoint. Files are read and checked while
//! the config is parsed, so a bad one is reported with its line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{files, ConfigError};

/// A PEM file as read at start. Debug shows the path only (it may be a key).
#[derive(Clone)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemFile({})", self.path.display())
    }
}

/// Where requests go first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, if set.
    FromEnvironment,
    /// `proxy = "none"`: straight to the receiver.
    Direct,
    /// `proxy = "http://host:port"`, with `no_proxy` exceptions.
    Url {
        url: url::Url,
        no_proxy: Vec<String>,
    },
}

/// How one endpoint's requests are made.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Roots trusted beside the system's.
    pub ca: Vec<PemFile>,
    /// The client certificate chain and key, as one PEM (key first).
    pub identity: Option<PemFile>,
    pub proxy: Proxy,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            ca: Vec::new(),
            identity: None,
            proxy: Proxy::FromEnvironment,
        }
    }
}

/// The `[http]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    #[serde(default)]
    no_proxy: Vec<Spanned<String>>,
}

/// The same keys of one `[[endpoint]]` (no `no_proxy`: an endpoint's own
/// proxy is its only way out).
#[derive(Deserialize, Default)]
pub(super) struct RawEndpointHttp {
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) client_cert: Option<Spanned<String>>,
    pub(super) client_key: Option<Spanned<String>>,
    pub(super) proxy: Option<Spanned<String>>,
}

impl RawEndpointHttp {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none()
            && self.client_cert.is_none()
            && self.client_key.is_none()
            && self.proxy.is_none()
    }
}

type ErrAt<'a> = &'a dyn Fn(usize, String) -> ConfigError;

/// The relay-wide settings.
pub(super) fn relay_wide(
    raw: Option<RawHttp>,
    base: &Path,
    err: ErrAt,
) -> Result<HttpSettings, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HttpSettings::default());
    };
    let mut no_proxy = Vec::new();
    for entry in &raw.no_proxy {
        let host = entry.get_ref().trim();
        if host.is_empty() || host.contains([',', ' ']) {
            return Err(err(
                entry.span().start,
                format!("http.no_proxy: {host:?} is not a host name, domain (\".example.com\"), address or network"),
            ));
        }
        no_proxy.push(host.to_string());
    }
    if raw.proxy.is_none() && !raw.no_proxy.is_empty() {
        return Err(err(
            raw.no_proxy[0].span().start,
            "http.no_proxy only means something with http.proxy (NO_PROXY goes with HTTPS_PROXY)"
                .into(),
        ));
    }
    let proxy = match &raw.proxy {
        None => Proxy::FromEnvironment,
        Some(p) => match proxy_value(p, "http.", err)? {
            Proxy::Url { url, .. } => Proxy::Url { url, no_proxy },
            other => other,
        },
    };
    Ok(HttpSettings {
        ca: ca(raw.ca_file.as_ref(), base, "http.", err)?
            .into_iter()
            .collect(),
        identity: identity(
            raw.client_cert.as_ref(),
            raw.client_key.as_ref(),
            base,
            "http.",
            err,
        )?,
        proxy,
    })
}

/// An endpoint's settings: its own keys over the relay-wide ones; None when
/// it sets none (it then shares the relay-wide client).
pub(super) fn for_endpoint(
    raw: &RawEndpointHttp,
    relay: &HttpSettings,
    name: &str,
    base: &Path,
    err: ErrAt,
) -> Result<Option<HttpSettings>, ConfigError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let prefix = format!("endpoint {name:?}: ");
    let mut settings = relay.clone();
    // Roots add up: the relay-wide ones, then the endpoint's.
    settings
        .ca
        .extend(ca(raw.ca_file.as_ref(), base, &prefix, err)?);
    if let Some(own) = identity(
        raw.client_cert.as_ref(),
        raw.client_key.as_ref(),
        base,
        &prefix,
        err,
    )? {
        settings.identity = Some(own);
    }
    if let Some(p) = &raw.proxy {
        settings.proxy = proxy_value(p, &prefix, err)?;
    }
    Ok(Some(settings))
}

fn proxy_value(p: &Spanned<String>, prefix: &str, err: ErrAt) -> Result<Proxy, ConfigError> {
    let text = p.get_ref().trim();
    if text == "none" {
        return Ok(Proxy::Direct);
    }
    let url = url::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            err(
                p.span().start,
                format!("{prefix}proxy must be an http:// or https:// URL such as \"http://proxy.internal:3128\", or \"none\""),
            )
        })?;
    Ok(Proxy::Url {
        url,
        no_proxy: Vec::new(),
    })
}

fn ca(
    file: Option<&Spanned<String>>,
    base: &Path,
    prefix: &str,
    err: ErrAt,
) -> Result<Option<PemFile>, ConfigError> {
    let Some(file) = file else { return Ok(None) };
    let at = file.span().start;
    let path = files::resolve(base, file.get_ref());
    let pem = files::read_bytes(&path).map_err(|e| err(at, format!("{prefix}{e}")))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(Some(PemFile { path, pem })),
        _ => Err(err(
            at,
            format!("{prefix}{} holds no PEM certificate", path.display()),
        )),
    }
}

fn identity(
    cert: Option<&Spanned<String>>,
    key: Option<&Spanned<String>>,
    base: &Path,
    prefix: &str,
    err: ErrAt,
) -> Result<Option<PemFile>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(c), None) => {
            return Err(err(
                c.span().start,
                format!("{prefix}client_cert needs client_key"),
            ))
        }
        (None, Some(k)) => {
            return Err(err(
                k.span().start,
                format!("{prefix}client_key needs client_cert"),
            ))
        }
    };
    let cert_path = files::resolve(base, cert.get_ref());
    let key_path = files::resolve(base, key.get_ref());
    let cert_pem = files::read_bytes(&cert_path)
        .map_err(|e| err(cert.span().start, format!("{prefix}{e}")))?;
    let key_pem =
        files::read_bytes(&key_path).map_err(|e| err(key.span().start, format!("{prefix}{e}")))?;
    // reqwest (rustls) takes the key and the chain as one PEM.
    let mut pem = key_pem;
    pem.push(b'\n');
    pem.extend_from_slice(&cert_pem);
    if reqwest::Identity::from_pem(&pem).is_err() {
        return Err(err(
            cert.span().start,
            format!(
                "{prefix}{} and {} are not a PEM certificate and its private key",
                cert_path.display(),
                key_path.display()
            ),
        ));
    }
    Ok(Some(PemFile {
        path: cert_path,
        pem,
    }))
}
