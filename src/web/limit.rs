//! Rate limits on signing in. Anyone on the internet reaches `/auth/login`, the OAuth callback (each good
//! one asks GitHub for a token and marks its `state` spent in the store) and the static token's form and
//! `Authorization: Bearer` (each is a guess at the token). So, per client address, at most
//! [`PER_ADDRESS_BURST`] attempts at once and one more every [`PER_ADDRESS_REFILL`]. Past it the answer is 429
//! with `Retry-After`. A bearer that is the token, and every other page, are never counted. There is no
//! budget over every address: starting a sign-in stores nothing (its `state` is signed, see
//! [`auth::new_state`](super::auth::new_state)), so many addresses together can spend nothing a real user
//! needs.
//!
//! The client address is the connection's peer, or, when the peer is one of `dashboard.trusted_proxies`, the
//! address the proxies appended to `X-Forwarded-For` (read right to left, skipping trusted proxies: a client
//! can write anything at the left of it, never at the right). An IPv6 client is counted by its /64 (one host
//! has one of those, and a /64 has more addresses than anyone could count).
//!
//! The limits are kept in memory, per replica: small counters, not a crate's (a keyed limiter such as
//! `governor`'s would be a new dependency tree for this, and still need a bound and pruning of its keys).
//! At most [`MAX_ADDRESSES`] addresses are tracked; past that, an address that has none of its own shares one
//! bucket with the other newcomers, so memory stays bounded whatever an attacker owns.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use tracing::warn;

use super::Dashboard;
use super::auth;
use super::html::page;

/// Sign-in attempts one address may make at once.
pub const PER_ADDRESS_BURST: u32 = 10;

/// How often an address gets one more attempt (so at most ten a minute, after the burst).
pub const PER_ADDRESS_REFILL: Duration = Duration::from_secs(6);

/// Addresses tracked at once; past it newcomers share one bucket.
pub const MAX_ADDRESSES: usize = 4096;

/// A token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, burst: u32, every: Duration, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / every.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(burst));
        self.at = now;
    }

    /// How long until one whole token is there (zero: it is).
    fn wait(&self, every: Duration) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            every.mul_f64(1.0 - self.tokens)
        }
    }
}

/// The limits, with what they are (tests use small ones).
pub struct Limiter {
    per_address: (u32, Duration),
    max_addresses: usize,
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The key of addresses past [`MAX_ADDRESSES`] (and of a request with no peer at all).
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new((PER_ADDRESS_BURST, PER_ADDRESS_REFILL), MAX_ADDRESSES)
    }
}

impl Limiter {
    pub fn new(per_address: (u32, Duration), max_addresses: usize) -> Limiter {
        Limiter {
            per_address,
            max_addresses,
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `client` (its key: see [`key`]), or says how long to wait.
    pub fn attempt(&self, client: IpAddr) -> Result<(), Duration> {
        self.attempt_at(client, Instant::now())
    }

    fn attempt_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let (burst, every) = self.per_address;
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let mut client = key(client);
        if !addresses.contains_key(&client) && addresses.len() >= self.max_addresses {
            // Forget the addresses whose buckets are full again (the same as never seen).
            addresses.retain(|_, b| {
                b.refill(burst, every, now);
                b.tokens < f64::from(burst)
            });
            if addresses.len() >= self.max_addresses {
                client = OVERFLOW;
            }
        }
        let bucket = addresses
            .entry(client)
            .or_insert_with(|| Bucket::full(burst, now));
        bucket.refill(burst, every, now);
        let wait = bucket.wait(every);
        if !wait.is_zero() {
            return Err(wait);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Addresses tracked now (for tests: the map stays bounded).
    pub fn tracked(&self) -> usize {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// What an address is counted as: IPv4 (also mapped into IPv6) as itself, IPv6 by its /64.
pub fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// The client's address: the peer, or, behind trusted proxies, the last address in `X-Forwarded-For` that
/// is not one of them. `None`: no peer known (a router served without a connection, as in unit tests).
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*a)));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Every X-Forwarded-For header, in order, as one list; read from the right.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // Garbage where a trusted proxy should have written an address: stop at the last good one.
        let Ok(address) = hop.parse::<IpAddr>() else {
            break;
        };
        client = address;
        if !is_trusted(&address) {
            break;
        }
    }
    Some(client)
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a request to the dashboard's routes is an attempt at signing in.
fn counted(dash: &Dashboard, path: &str, headers: &HeaderMap) -> bool {
    if matches!(path, "/auth/login" | "/auth/callback" | "/auth/token") {
        return true;
    }
    // A bearer is a guess at the token unless it is the token.
    let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    use octocrab::secrecy::ExposeSecret;
    let good = dash
        .access
        .token
        .as_ref()
        .is_some_and(|t| auth::same(bearer.trim(), t.expose_secret()));
    !good
}

/// The middleware in front of the dashboard's routes.
pub async fn limit(State(dash): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    if !counted(&dash, request.uri().path(), request.headers()) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client =
        client_address(peer, request.headers(), &dash.access.trusted_proxies).unwrap_or(OVERFLOW);
    match dash.limiter.attempt(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            warn!(%client, "dashboard: too many sign-in attempts from one address: refused with 429");
            too_many(wait)
        }
    }
}

/// 429, with when to come back.
fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many sign-in attempts",
        None,
        &format!(
            "<p id=\"too-many\">Too many sign-in attempts: try again in {} s.</p>",
            seconds.max(1)
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_its_burst_then_waits_and_others_are_not_held_up() {
        let limiter = Limiter::new((3, Duration::from_secs(6)), 16);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.attempt_at(ip("203.0.113.7"), t0).unwrap();
        }
        let wait = limiter.attempt_at(ip("203.0.113.7"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        limiter.attempt_at(ip("203.0.113.8"), t0).unwrap();
        // Six seconds later, one more.
        let later = t0 + Duration::from_secs(6);
        limiter.attempt_at(ip("203.0.113.7"), later).unwrap();
        assert!(limiter.attempt_at(ip("203.0.113.7"), later).is_err());
    }

    #[test]
    fn the_addresses_tracked_stay_bounded_and_newcomers_past_it_share_a_bucket() {
        let limiter = Limiter::new((2, Duration::from_secs(600)), 4);
        let t0 = Instant::now();
        for n in 0..4 {
            limiter.attempt_at(ip(&format!("192.0.2.{n}")), t0).unwrap();
        }
        // Every newcomer now counts against one bucket: two, then refused.
        limiter.attempt_at(ip("192.0.2.100"), t0).unwrap();
        limiter.attempt_at(ip("192.0.2.101"), t0).unwrap();
        assert!(limiter.attempt_at(ip("192.0.2.102"), t0).is_err());
        assert_eq!(limiter.tracked(), 5, "four addresses and the shared bucket");
        // Once the old buckets are full again they are forgotten, and a newcomer has its own.
        let later = t0 + Duration::from_secs(3600);
        limiter.attempt_at(ip("192.0.2.200"), later).unwrap();
        assert!(limiter.tracked() <= 4);
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let limiter = Limiter::new((1, Duration::from_secs(60)), 16);
        let t0 = Instant::now();
        limiter.attempt_at(ip("2001:db8:1:2::1"), t0).unwrap();
        assert!(limiter.attempt_at(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        limiter.attempt_at(ip("2001:db8:1:3::1"), t0).unwrap();
        assert_eq!(key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_read_from_the_right() {
        let trusted =
            crate::config::parse_proxies(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
        // From the internet directly: the header is the client's own words, ignored.
        assert_eq!(
            client_address(Some(ip("198.51.100.1")), &headers, &trusted),
            Some(ip("198.51.100.1"))
        );
        // Through two trusted proxies: the address the outer one saw, not what the client wrote before it.
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &headers, &trusted),
            Some(ip("203.0.113.9"))
        );
        // No proxies configured: never believed.
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &headers, &[]),
            Some(ip("127.0.0.1"))
        );
        // Garbage at the right: the proxy's own address, not something to the left of it.
        let mut bad = HeaderMap::new();
        bad.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, nonsense"),
        );
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), &bad, &trusted),
            Some(ip("10.0.0.1"))
        );
        assert!(crate::config::parse_proxies(&["10.0.0.0/33".into()]).is_err());
        assert!(crate::config::parse_proxies(&["proxy.local".into()]).is_err());
    }

    #[test]
    fn a_config_with_a_proxy_that_is_no_address_is_refused_at_start() {
        use crate::config::{Config, ConfigSource};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nightshift.yml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&ConfigSource {
                path: &path,
                required: true,
                env: &|_| None,
            })
        };
        let refused =
            load("dashboard:\n  trusted_proxies: [10.0.0.0/8, proxy.local]\n").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("`proxy.local` is not an address"),
            "{refused}"
        );
        let config = load("dashboard:\n  trusted_proxies: [10.0.0.0/8, \"::1\"]\n").unwrap();
        assert_eq!(config.dashboard.trusted_proxies.len(), 2);
        assert!(config.dashboard.trusted_proxies[1].contains(&ip("::1")));
    }
}
