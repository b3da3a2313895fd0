//! libpq's TLS settings for the database connection, pure: `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey` read from the connection URL (or
//! `key=value` string), falling back to `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGSSLCERT` and `PGSSLKEY`; what each mode verifies. The rustls side is
//! [`connector`].
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and refuses
//! the other parameters, so they are taken out of the string it is given.

use std::path::PathBuf;

pub mod connector;

/// libpq's `sslmode`, as the relay implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Cleartext only.
    Disable,
    /// TLS when the server offers it, cleartext otherwise; nothing verified.
    Prefer,
    /// TLS or fail; the certificate is not checked (unless a root is given:
    /// then as `VerifyCa`, as libpq does).
    Require,
    /// TLS, and the server's certificate chain must lead to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            // libpq's "allow" tries cleartext first; taking TLS first when the
            // server offers it is never weaker.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

/// What the TLS layer must do for one database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// Checked against when `mode` verifies; None for the modes that do not.
    pub roots: Option<Roots>,
    /// Client certificate and key (`sslcert`, `sslkey`), for `cert` auth.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsParams {
    /// Whether the server's chain is checked.
    pub fn verifies_chain(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The parameters as found, before defaults.
#[derive(Debug, Default)]
struct Given {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

/// libpq parameters the relay does not implement: refused rather than ignored.
const REFUSED: &[&str] = &[
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
];

/// Splits `url` into what tokio-postgres is given (the TLS parameters taken
/// out) and the TLS settings. `env` looks up `PGSSL*` variables, `home` is
/// where libpq's default files (`~/.postgresql/root.crt`, `postgresql.crt`,
/// `postgresql.key`) would be, and `exists` tells whether a file is there.
/// Errors are one line and never contain the URL (it may hold a password).
pub fn split(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<PathBuf>,
    exists: &dyn Fn(&std::path::Path) -> bool,
) -> Result<(String, TlsParams), String> {
    let (rest, given) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)?
    } else {
        split_keyword_value(url)?
    };
    let pick = |from_url: Option<String>, var: &str| {
        from_url.or_else(|| env(var).filter(|v| !v.is_empty()))
    };
    let sslmode = pick(given.sslmode, "PGSSLMODE");
    let rootcert = pick(given.sslrootcert, "PGSSLROOTCERT");
    let cert = pick(given.sslcert, "PGSSLCERT");
    let key = pick(given.sslkey, "PGSSLKEY");
    let dot = home.map(|h| h.join(".postgresql"));
    let default_file = |name: &str| dot.as_ref().map(|d| d.join(name)).filter(|p| exists(p));

    let system = rootcert.as_deref() == Some("system");
    let mut mode = match sslmode.as_deref() {
        Some(text) => SslMode::parse(text)?,
        // libpq: sslrootcert=system makes verify-full the default.
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system && mode != SslMode::VerifyFull {
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full, not {}",
            mode.name()
        ));
    }
    let roots = match rootcert.as_deref() {
        Some("system") => Some(Roots::System),
        Some(path) => Some(Roots::File(PathBuf::from(path))),
        None => default_file("root.crt").map(Roots::File),
    };
    // libpq: with a root certificate at hand, require checks the chain.
    if mode == SslMode::Require && roots.is_some() {
        mode = SslMode::VerifyCa;
    }
    let roots = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => Some(roots.ok_or_else(|| {
            format!(
                "sslmode={} needs the root certificate to check the server against: set sslrootcert=FILE \
                 (or PGSSLROOTCERT; sslrootcert=system for the system's trust store)",
                mode.name()
            )
        })?),
        _ => None,
    };
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (Some(_), None) => return Err("sslcert is given without sslkey".into()),
        (None, Some(_)) => return Err("sslkey is given without sslcert".into()),
        (None, None) => match (
            default_file("postgresql.crt"),
            default_file("postgresql.key"),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        },
    };
    Ok((
        rest,
        TlsParams {
            mode,
            roots,
            client,
        },
    ))
}

fn take(given: &mut Given, key: &str, value: String) -> Result<bool, String> {
    let slot = match key {
        "sslmode" => &mut given.sslmode,
        "sslrootcert" => &mut given.sslrootcert,
        "sslcert" => &mut given.sslcert,
        "sslkey" => &mut given.sslkey,
        k if REFUSED.contains(&k) => {
            return Err(format!("the connection parameter {k} is not supported"))
        }
        _ => return Ok(false),
    };
    *slot = Some(value);
    Ok(true)
}

/// `postgres://...?a=b&sslmode=...`: the query pairs are kept verbatim but
/// for the TLS ones.
fn split_url(url: &str) -> Result<(String, Given), String> {
    let mut given = Given::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), given));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)?;
        if !take(&mut given, &key, percent_decode(v)?)? {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, given))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("the database URL has a bad %-escape in its parameters")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the database URL's parameters are not UTF-8".into())
}

/// `host=db sslmode=verify-full ...` (libpq's keyword/value form): values may
/// be single-quoted with `\'` and `\\` escapes. The rest is rebuilt quoted.
fn split_keyword_value(text: &str) -> Result<(String, Given), String> {
    let mut given = Given::default();
    let mut kept = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "the connection string has {key:?} without \"=value\" (write key=value pairs or a postgres:// URL)"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err("the connection string has an unterminated quote".into()),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().unwrap_or('\\')),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        if !take(&mut given, &key, value.clone())? {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), given))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn params(url: &str) -> Result<(String, TlsParams), String> {
        split(url, &no_env, None, &|_| false)
    }

    fn mode(url: &str) -> SslMode {
        params(url).unwrap().1.mode
    }

    #[test]
    fn the_modes_follow_libpq() {
        let base = "postgres://relay:pw@db:5432/app";
        assert_eq!(mode(base), SslMode::Prefer);
        assert_eq!(mode(&format!("{base}?sslmode=disable")), SslMode::Disable);
        assert_eq!(mode(&format!("{base}?sslmode=allow")), SslMode::Prefer);
        assert_eq!(mode(&format!("{base}?sslmode=require")), SslMode::Require);
        let full = params(&format!("{base}?sslmode=verify-full&sslrootcert=/ca.pem")).unwrap();
        assert_eq!(full.1.mode, SslMode::VerifyFull);
        assert_eq!(full.1.roots, Some(Roots::File("/ca.pem".into())));
        assert!(full.1.verifies_chain());
        // require with a root behaves as verify-ca.
        assert_eq!(
            mode(&format!("{base}?sslmode=require&sslrootcert=/ca.pem")),
            SslMode::VerifyCa
        );
        // sslrootcert=system: verify-full by default, weaker modes refused.
        let system = params(&format!("{base}?sslrootcert=system")).unwrap().1;
        assert_eq!(
            (system.mode, system.roots),
            (SslMode::VerifyFull, Some(Roots::System))
        );
        let err = params(&format!("{base}?sslrootcert=system&sslmode=require")).unwrap_err();
        assert!(err.contains("needs sslmode=verify-full"), "{err}");
    }

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_url() {
        let (rest, p) = params(
            "postgres://relay:pw@db/app?connect_timeout=10&sslmode=verify-ca&sslrootcert=%2Fetc%2Fca%20x.pem&sslcert=/c.pem&sslkey=/k.pem&application_name=a",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://relay:pw@db/app?connect_timeout=10&application_name=a"
        );
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.roots, Some(Roots::File("/etc/ca x.pem".into())));
        assert_eq!(p.client, Some(("/c.pem".into(), "/k.pem".into())));
        let (rest, _) = params("postgres://db/app?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://db/app");
        // What is left parses for tokio-postgres.
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn keyword_value_strings_work_too() {
        let (rest, p) = params(
            r"host=db password='a b\'c' sslmode = verify-full sslrootcert='/my ca.pem' dbname=app",
        )
        .unwrap();
        assert_eq!(rest, r"host='db' password='a b\'c' dbname='app'");
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.roots, Some(Roots::File("/my ca.pem".into())));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert!(params("host=db sslmode").unwrap_err().contains("without"));
    }

    #[test]
    fn the_environment_fills_in_what_the_url_does_not_say() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGSSLROOTCERT" => Some("/env-ca.pem".to_string()),
            "PGSSLCERT" => Some("/env.crt".to_string()),
            "PGSSLKEY" => Some("/env.key".to_string()),
            _ => None,
        };
        let (_, p) = split("postgres://db/app", &env, None, &|_| false).unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.roots, Some(Roots::File("/env-ca.pem".into())));
        assert_eq!(p.client, Some(("/env.crt".into(), "/env.key".into())));
        // The URL wins.
        let (_, p) = split("postgres://db/app?sslmode=disable", &env, None, &|_| false).unwrap();
        assert_eq!(p.mode, SslMode::Disable);
    }

    #[test]
    fn libpq_default_files_are_used_when_present() {
        let home = PathBuf::from("/home/relay");
        let present = |p: &Path| p.starts_with("/home/relay/.postgresql");
        let (_, p) = split(
            "postgres://db/app?sslmode=require",
            &no_env,
            Some(home.clone()),
            &present,
        )
        .unwrap();
        // require + a root.crt at hand: the chain is checked.
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(
            p.roots,
            Some(Roots::File("/home/relay/.postgresql/root.crt".into()))
        );
        assert!(p.client.is_some());
        let (_, p) = split(
            "postgres://db/app?sslmode=require",
            &no_env,
            Some(home),
            &|_| false,
        )
        .unwrap();
        assert_eq!((p.mode, p.roots, p.client), (SslMode::Require, None, None));
    }

    #[test]
    fn mistakes_are_one_clear_line_without_the_url() {
        let err = params("postgres://relay:hunter2@db/app?sslmode=verify_full").unwrap_err();
        assert!(
            err.contains("verify_full") && !err.contains("hunter2"),
            "{err}"
        );
        let err = params("postgres://relay:hunter2@db/app?sslmode=verify-full").unwrap_err();
        assert!(
            err.contains("sslrootcert=FILE") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(params("postgres://db/app?sslcert=/c.pem")
            .unwrap_err()
            .contains("without sslkey"));
        assert!(params("postgres://db/app?sslpassword=x")
            .unwrap_err()
            .contains("not supported"));
        assert!(params("postgres://db/app?sslmode=%zz")
            .unwrap_err()
            .contains("%-escape"));
    }
}
