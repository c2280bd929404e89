//! Egress: the hosts a profile allows (`egress: [HOST, "*.DOMAIN"]`), reached over HTTPS through the gateway
//! as an HTTP CONNECT proxy. A tunnel needs the job's token (as the proxy's user or password, or a Bearer
//! `Proxy-Authorization`), goes only to port 443 of an allowed name, and only to a public address: a name that
//! resolves to loopback, a private network, link-local (cloud metadata) or the like is refused, so an allowed
//! name cannot be pointed back at nightshift or the operator's network. The bytes in the tunnel (TLS) are not
//! looked at.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tracing::warn;

use super::Gateway;

/// The one port a tunnel may reach.
pub const HTTPS_PORT: u16 = 443;

/// Whether `host` is one of `allowed`: the same name, or a name under a `*.DOMAIN` (not the domain itself).
pub fn allows(allowed: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => host == pattern,
        }
    })
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared, documentation,
/// multicast or unspecified, in IPv4 or IPv6, IPv4-mapped included).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064)
        }
    }
}

/// The job token a proxy request carries: Basic (the token as user or password) or Bearer.
fn proxy_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::PROXY_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    Some(
        if user.starts_with("nsjob-") {
            user
        } else {
            password
        }
        .to_owned(),
    )
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut response = (status, format!("nightshift: {message}\n")).into_response();
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        response.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"nightshift\""),
        );
    }
    response
}

/// One CONNECT request.
pub async fn connect(gateway: Arc<Gateway>, mut request: Request) -> Response {
    let Some(grant) = proxy_token(request.headers()).and_then(|t| gateway.grant(&t)) else {
        return refuse(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "this proxy needs the job's token (it is in HTTPS_PROXY)".into(),
        );
    };
    let Some(authority) = request.uri().authority().cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT needs HOST:443".into());
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(HTTPS_PORT);
    let test_port = *gateway.egress_test_port.lock().expect("egress lock");
    if port != test_port.unwrap_or(HTTPS_PORT) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("egress goes only to port 443, not {host}:{port}"),
        );
    }
    if !allows(&grant.egress, host) {
        gateway
            .log(
                grant.job,
                format!("gateway: refused egress to {host}:{port} (not in the profile's egress)"),
            )
            .await;
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{host} is not in this agent's egress allow-list"),
        );
    }
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(found) => found.collect(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                format!("{host} does not resolve: {e}"),
            );
        }
    };
    let public: Vec<SocketAddr> = addresses
        .iter()
        .copied()
        .filter(|a| test_port.is_some() || is_public(a.ip()))
        .collect();
    if public.is_empty() || public.len() < addresses.len() {
        gateway
            .log(
                grant.job,
                format!("gateway: refused egress to {host}: it resolves to a non-public address"),
            )
            .await;
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{host} resolves to an address that is not public"),
        );
    }
    let upstream = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&public[..]),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return refuse(StatusCode::BAD_GATEWAY, format!("{host}:{port}: {e}")),
        Err(_) => {
            return refuse(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{host}:{port} did not answer"),
            );
        }
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let job = grant.job;
    tokio::spawn(async move {
        // The grant is held while the tunnel is open; the job's end revokes the token, not open tunnels
        // (the box, and everything in it, is gone by then).
        let _grant = grant;
        match upgrade.await {
            Ok(upgraded) => {
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                let mut upstream = upstream;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            Err(e) => warn!("job {job}: the egress tunnel did not open: {e}"),
        }
    });
    Response::new(Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_allows_names_under_its_domain_only() {
        let allowed = vec!["*.crates.io".to_owned(), "registry.npmjs.org".to_owned()];
        assert!(allows(&allowed, "static.crates.io"));
        assert!(allows(&allowed, "a.b.crates.io"));
        assert!(allows(&allowed, "Registry.NPMjs.org."));
        assert!(!allows(&allowed, "crates.io"));
        assert!(!allows(&allowed, "evilcrates.io"));
        assert!(!allows(&allowed, "crates.io.evil.example"));
        assert!(!allows(&allowed, "npmjs.org"));
        assert!(!allows(&allowed, "x.registry.npmjs.org"));
    }

    #[test]
    fn only_public_addresses_are_reachable() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_token_comes_as_proxy_user_password_or_bearer() {
        let basic = |s: &str| {
            let mut h = HeaderMap::new();
            let v = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            );
            h.insert(header::PROXY_AUTHORIZATION, v.parse().unwrap());
            proxy_token(&h)
        };
        assert_eq!(basic("nsjob-1:").as_deref(), Some("nsjob-1"));
        assert_eq!(basic("nightshift:nsjob-2").as_deref(), Some("nsjob-2"));
        let mut h = HeaderMap::new();
        h.insert(
            header::PROXY_AUTHORIZATION,
            "Bearer nsjob-3".parse().unwrap(),
        );
        assert_eq!(proxy_token(&h).as_deref(), Some("nsjob-3"));
        assert_eq!(proxy_token(&HeaderMap::new()), None);
    }
}
