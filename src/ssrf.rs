//! The optional SSRF guard: refuses to connect to loopback, private,
//! link-local (cloud metadata included) and other non-public addresses,
//! unless an allowlist says otherwise. It checks the addresses actually
//! connected to: hostnames through the HTTP client's resolver (only checked
//! addresses are handed to the connector), IP literals before the request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Which addresses may be connected to.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Networks allowed even though they are not public.
    pub allow: Vec<IpNet>,
}

impl Guard {
    /// Ok if `ip` may be connected to; otherwise why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match non_public(ip) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "refused by the SSRF guard: {ip} is a {kind} address (allow it with ssrf_guard.allow)"
            )),
        }
    }
}

/// The kind of a non-public address, or None for a public one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                // fc00::/7 unique local, which includes fd00:ec2::254 (a metadata address).
                Some("private")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // 64:ff9b::/96 NAT64 can reach any IPv4 address, private ones included.
                Some("NAT64")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16, where cloud metadata services live (169.254.169.254).
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

/// Checks every address `host` resolves to, for a request a proxy will make
/// (the proxy resolves the name again; see docs/security.md).
pub async fn check_name(guard: &Guard, host: &str) -> Result<(), String> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .collect();
    if resolved.is_empty() {
        return Err(format!("{host} has no address"));
    }
    for addr in resolved {
        guard
            .check(addr.ip())
            .map_err(|why| format!("{host}: {why}"))?;
    }
    Ok(())
}

/// The HTTP client's resolver when the guard is on: resolves as usual, then
/// keeps only the addresses the guard allows. The proxies' names (trusted:
/// they are the operator's config) resolve unfiltered.
pub struct GuardedResolver {
    pub guard: Arc<Guard>,
    /// Lower-case host names of the client's proxies.
    pub trusted: Vec<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let trusted = self
            .trusted
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_str()));
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?
                .collect();
            if trusted {
                let addrs: reqwest::dns::Addrs = Box::new(resolved.into_iter());
                return Ok(addrs);
            }
            let mut refusals = Vec::new();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match guard.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refusals.push(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusals
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| format!("{host} has no address"));
                return Err(format!("{host}: {why}").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_named() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "private"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a00:1", "NAT64"),
        ] {
            assert_eq!(non_public(ip(addr)), Some(kind), "{addr}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert_eq!(non_public(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn the_allowlist_wins() {
        let guard = Guard {
            allow: vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.20.0.0/16".parse().unwrap(),
            ],
        };
        assert!(guard.check(ip("127.0.0.1")).is_ok());
        assert!(guard.check(ip("10.20.3.4")).is_ok());
        let err = guard.check(ip("10.21.0.1")).unwrap_err();
        assert!(err.contains("10.21.0.1 is a private address"), "{err}");
        assert!(guard.check(ip("8.8.8.8")).is_ok());
    }
}
