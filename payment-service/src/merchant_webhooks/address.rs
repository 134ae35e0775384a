//! Where a webhook may be sent: `http`/`https` URLs whose host is a public address. Private,
//! loopback, link-local (the cloud metadata service at 169.254.169.254 among them), shared,
//! multicast and reserved addresses are refused unless `WEBHOOK_ALLOW_PRIVATE=true`, so a
//! merchant cannot make the platform call its own internal network (SSRF).
//!
//! A name is checked twice: when the endpoint is registered ([`check_destination`]), and again
//! by [`PublicOnly`], the resolver the delivery client connects through — the addresses it
//! connects to are the ones it checked, so a name re-pointed at a private address after
//! registration (DNS rebinding) reaches nothing. Redirects are not followed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A URL an endpoint may have, by its form alone (the addresses are [`check_destination`]'s).
pub fn parse_url(raw: &str) -> Result<Url, String> {
    if raw.len() > 2048 {
        return Err("url: at most 2048 characters".into());
    }
    let url = Url::parse(raw).map_err(|e| format!("url: not a URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("url: only http and https, not {}", url.scheme()));
    }
    if url.host().is_none() {
        return Err("url: a host is required".into());
    }
    Ok(url)
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 0 && c == 0)) // IETF protocol assignments
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address: judge that one.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
}

/// The addresses `url` reaches, each checked unless private ones are allowed.
pub async fn check_destination(url: &Url, allow_private: bool) -> Result<(), String> {
    let host = url.host_str().ok_or("url: a host is required")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("url: {host} does not resolve ({e})"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("url: {host} does not resolve"));
    }
    if !allow_private && let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "url: {host} is a private, loopback or link-local address ({}); webhooks go to public addresses",
            private.ip()
        ));
    }
    Ok(())
}

/// The delivery client's resolver when private addresses are refused: it resolves as the
/// system does and hands the connector only public addresses, failing when none is left.
#[derive(Debug, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let lookup: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        });
        lookup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_public() {
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip(text)), "{text} passed as public");
        }
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(text)), "{text} refused");
        }
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        assert!(parse_url("https://example.com/hooks").is_ok());
        assert!(parse_url("http://example.com:8080/").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://x",
            "not a url",
            "http://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} taken");
        }
        assert!(parse_url(&format!("https://example.com/{}", "a".repeat(2048))).is_err());
    }

    #[tokio::test]
    async fn literal_and_named_private_destinations_are_refused_unless_allowed() {
        for raw in [
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://localhost:8080/",
            "http://10.0.0.5/",
        ] {
            let url = parse_url(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert!(check_destination(&url, false).await.is_err(), "{raw} allowed");
            assert!(
                check_destination(&url, true).await.is_ok(),
                "{raw} refused though allowed"
            );
        }
    }

    #[tokio::test]
    async fn the_delivery_resolver_hands_out_no_private_address() {
        let name: Name = match "localhost".parse() {
            Ok(n) => n,
            Err(_) => panic!("localhost is a name"),
        };
        assert!(PublicOnly.resolve(name).await.is_err());
    }
}
