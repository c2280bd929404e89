//! Who is signed in to the dashboard, and how they got there.
//!
//! **With GitHub**, through the App's OAuth client: `/auth/login` sends the browser to GitHub's authorize
//! page with a `state` bound to a fresh random cookie of this browser (one use, ten minutes); `/auth/callback`
//! takes it back, exchanges the code for the user's token, asks who the user is (`GET /user`) and, unless
//! the login is listed in `dashboard.users`, whether they are an active member of one of `dashboard.orgs`
//! (`GET /user/memberships/orgs/{org}`, which needs the App's `members: read`). The token is then dropped:
//! it is never stored. **With the static token** (`dashboard.token`): `Authorization: Bearer` on each
//! request, or the sign-in form, which makes a session. Either way the token signs in as an admin.
//!
//! A session is a random 256-bit id in an `HttpOnly; SameSite=Lax; Path=/` cookie (`Secure` behind https),
//! good for 12 hours. Each has its own CSRF token, which every form that changes something carries and which
//! is checked with the request's `Origin`. Sessions and sign-ins under way live in the store, so every
//! replica behind a load balancer knows them and a restart signs no one out; the store keeps only the SHA-256
//! of a session id (a leaked backup signs no one in), and each request reads its session there (no cache:
//! signing out on one replica is signing out on all of them at once).
//!
//! A sign-in's `state` is not stored when it starts: it is its expiry and an HMAC-SHA256 of the browser's
//! cookie and that expiry, under a key derived from the OAuth client's secret (which every replica has). So
//! starting a sign-in costs the store nothing, and no number of visitors can crowd out a real user's sign-in.
//! The callback checks the HMAC, the cookie and the expiry, then marks the `state` spent in the store (its
//! hash, until it expires): a replayed or raced callback signs in at most once, on any replica. Only a
//! callback that passed those checks writes, and it comes from a browser that was sent to GitHub.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use octocrab::secrecy::ExposeSecret;
use tracing::warn;

use crate::store::{DashboardSession, Store};

/// How long a session lasts.
pub const SESSION_LIFE: Duration = Duration::from_secs(12 * 60 * 60);

/// How long a sign-in with GitHub may take, from `/auth/login` to the callback.
pub const STATE_LIFE: Duration = Duration::from_secs(10 * 60);

/// How far ahead of this replica's clock another replica's may run: a sign-in started there and finished
/// here is still good.
const CLOCK_SKEW: Duration = Duration::from_secs(120);

/// At most this many sessions of one login are kept (the oldest go first): signing in again and again
/// grows nothing.
pub const SESSIONS_PER_LOGIN: u32 = 16;

/// At most this many spent `state`s are remembered (the oldest go first). Past it, a replay of a forgotten one
/// still gets nowhere: GitHub takes each code once.
pub const MAX_SIGN_INS: u32 = 4096;

/// The session cookie (behind http; see [`session_cookie_name`]).
pub const COOKIE: &str = "nightshift_session";

/// The session cookie's name: behind https, with the `__Host-` prefix. A browser takes a cookie so named
/// only from this very host, over https, for every path and with no `Domain`, so a sibling subdomain (or a
/// plain-http page on the same name) cannot plant one: no signing a victim in as the attacker. Behind plain
/// http (a first local run) the prefix cannot be had, and the plain name is used.
pub fn session_cookie_name(secure: bool) -> std::borrow::Cow<'static, str> {
    crate::text::host_cookie_name(COOKIE, secure)
}

/// The name of the cookie that binds a sign-in to its browser, as [`session_cookie_name`].
pub fn state_cookie_name(secure: bool) -> std::borrow::Cow<'static, str> {
    crate::text::host_cookie_name(STATE_COOKIE, secure)
}

/// The cookie that binds a sign-in's `state` to the browser that started it.
pub const STATE_COOKIE: &str = "nightshift_signin";

/// The GitHub App permissions the dashboard needs (organization membership of who signs in), beside what
/// jobs need: deploy/github-app-manifest.yml asks for them.
pub const APP_PERMISSIONS: &[(&str, &str)] = &[("members", "read")];

/// Someone signed in.
#[derive(Clone, Debug)]
pub struct Identity {
    pub login: String,
    pub admin: bool,
    /// The session's id and CSRF token; none when the static token came as `Authorization: Bearer` (no
    /// cookie: a browser never sends it by itself, so there is nothing to forge).
    pub session: Option<(String, String)>,
}

impl Identity {
    pub fn csrf(&self) -> Option<&str> {
        self.session.as_ref().map(|(_, csrf)| csrf.as_str())
    }
}

/// The login a session made with the static token is stored under: `token#` and the start of the token's
/// SHA-256 (no GitHub login has a `#`). Such a session is good only while the token is the one it was made
/// with: changing or removing the token ends every session it made.
pub fn token_login(token: &str) -> String {
    format!("token#{}", &digest(token)[..16])
}

/// Who a stored session is now, under the dashboard's config as it is (it may have changed since the session
/// was made, and sessions outlive restarts): a token session only while the token is the one it was made
/// with; a GitHub login only while `users` names it or `orgs` could have let it in (membership is checked
/// again at the next sign-in: sessions last 12 hours), and an admin only while `admins` names it.
pub fn still_allowed(who: Identity, access: &crate::config::DashboardConfig) -> Option<Identity> {
    if who.session.is_none() {
        // The bearer token itself, checked on this request.
        return Some(who);
    }
    if let Some(rest) = who.login.strip_prefix("token#") {
        let current = access.token.as_ref()?;
        return (token_login(current.expose_secret()) == format!("token#{rest}")).then(|| {
            Identity {
                login: "token".into(),
                admin: true,
                session: who.session,
            }
        });
    }
    if who.login == "token" {
        // Made with the static token by a version that did not bind it: signed in again.
        return None;
    }
    let login = who.login.to_lowercase();
    if !access.users.contains(&login) && access.orgs.is_empty() {
        return None;
    }
    Some(Identity {
        admin: who.admin && access.admins.contains(&login),
        ..who
    })
}

/// The sessions and the sign-ins under way, in the store.
pub struct Sessions {
    store: Arc<dyn Store>,
}

/// The SHA-256 of a secret, hex: how the store knows a session id, a `state` or a browser binding.
pub fn digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether `value` looks like a value [`random_hex`] made of `bytes` bytes (what else comes is no one's).
fn is_random_hex(value: &str, bytes: usize) -> bool {
    value.len() == bytes * 2
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A random value, hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the system has randomness");
    hex::encode(buf)
}

/// Constant-time equality of two secrets (their lengths are not secret).
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A GitHub login or organization name: letters, digits and hyphens, at most 39.
pub fn valid_login(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 39
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
}

pub use crate::text::cookie;

impl Sessions {
    pub fn new(store: Arc<dyn Store>) -> Sessions {
        Sessions { store }
    }

    /// A new session; returns its id (the store keeps only its hash).
    pub async fn create(&self, login: &str, admin: bool) -> Result<String> {
        let id = random_hex(32);
        let now = crate::now_ms();
        let session = DashboardSession {
            login: login.to_owned(),
            admin,
            csrf: random_hex(32),
            expires_at: now + ms(SESSION_LIFE),
        };
        self.store
            .create_session(&digest(&id), &session, now, SESSIONS_PER_LOGIN)
            .await?;
        Ok(id)
    }

    /// The session `id` names, if it is still good.
    pub async fn get(&self, id: &str) -> Result<Option<Identity>> {
        if !is_random_hex(id, 32) {
            return Ok(None);
        }
        let now = crate::now_ms();
        Ok(self
            .store
            .session(&digest(id), now)
            .await?
            .map(|session| Identity {
                login: session.login,
                admin: session.admin,
                session: Some((id.to_owned(), session.csrf)),
            }))
    }

    /// Ends a session, on every replica.
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.store.delete_session(&digest(id)).await
    }

    /// Takes `state` (once, on whichever replica) if it was made under `secret` for `browser` (the value of
    /// its [`STATE_COOKIE`]) and is still good: false for any other, and for one taken before.
    pub async fn take_state(
        &self,
        secret: &str,
        state: &str,
        browser: Option<&str>,
    ) -> Result<bool> {
        let now = crate::now_ms();
        let Some(expires_at) = browser.and_then(|b| check_state(secret, state, b, now)) else {
            return Ok(false);
        };
        self.store
            .spend_signin(&digest(state), expires_at, now, MAX_SIGN_INS)
            .await
    }
}

/// The key a sign-in's `state` is signed with: derived from the OAuth client's secret, so that it is the same
/// on every replica and used for nothing else.
fn state_key(secret: &str) -> Hmac<sha2::Sha256> {
    let mut derive = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    derive.update(b"nightshift dashboard sign-in state v1");
    <Hmac<sha2::Sha256> as Mac>::new_from_slice(&derive.finalize().into_bytes())
        .expect("HMAC takes a key of any length")
}

/// The HMAC of a `state`, hex.
fn state_mac(secret: &str, browser: &str, expires_at: i64) -> String {
    let mut mac = state_key(secret);
    mac.update(browser.as_bytes());
    mac.update(b".");
    mac.update(expires_at.to_string().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A `state` for a sign-in started at `now` (ms) by `browser` (the value of its [`STATE_COOKIE`], from
/// [`random_hex`]): `{expiry ms}-{HMAC hex}`, good for [`STATE_LIFE`].
pub fn new_state(secret: &str, browser: &str, now: i64) -> String {
    let expires_at = now + ms(STATE_LIFE);
    format!("{expires_at}-{}", state_mac(secret, browser, expires_at))
}

/// When `state` expires, if [`new_state`] made it under `secret` for `browser` and it is still good at `now`.
pub fn check_state(secret: &str, state: &str, browser: &str, now: i64) -> Option<i64> {
    if !is_random_hex(browser, 20) || state.len() > 90 {
        return None;
    }
    let (expires, mac) = state.split_once('-')?;
    if expires.is_empty() || expires.len() > 15 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let expires_at: i64 = expires.parse().ok()?;
    // One spelling only (`0` + expiry parses the same): each state is spent once under one name.
    if expires != expires_at.to_string() {
        return None;
    }
    let good = same(mac, &state_mac(secret, browser, expires_at));
    // Made at most ten minutes ago, on this replica or another whose clock may run a little ahead.
    let latest = now + ms(STATE_LIFE) + ms(CLOCK_SKEW);
    (good && expires_at > now && expires_at <= latest).then_some(expires_at)
}

/// Who the request comes from: the static token as a bearer, or a good session cookie. A store that fails
/// signs no one in (logged).
pub async fn identify(
    sessions: &Sessions,
    token: Option<&octocrab::secrecy::SecretString>,
    headers: &HeaderMap,
    cookie_name: &str,
) -> Option<Identity> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        // A bearer that is not the token is no one, whatever cookie comes with it.
        return token
            .filter(|t| same(bearer.trim(), t.expose_secret()))
            .map(|_| Identity {
                login: "token".into(),
                admin: true,
                session: None,
            });
    }
    match sessions.get(&cookie(headers, cookie_name)?).await {
        Ok(who) => who,
        Err(e) => {
            warn!("dashboard: reading a session from the store failed: {e:#}");
            None
        }
    }
}

/// Whether a POST that changes something may go ahead for `who`: a bearer always (its header cannot be
/// forged by another site); a session only with its CSRF token and from this service's own pages
/// (`Origin`, or `Referer` when a browser sends no `Origin`, equal to `expected_origin`).
pub fn post_allowed(
    who: &Identity,
    headers: &HeaderMap,
    csrf: Option<&str>,
    expected_origin: &str,
) -> bool {
    let Some((_, session_csrf)) = &who.session else {
        return true;
    };
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .map(super::html::origin)
        });
    let same_origin = origin.is_some_and(|o| o.eq_ignore_ascii_case(expected_origin));
    same_origin && csrf.is_some_and(|c| same(c, session_csrf))
}

/// `application/x-www-form-urlencoded`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Why a sign-in with GitHub did not let someone in.
#[derive(Debug)]
pub enum Refused {
    /// GitHub said who they are, and they are not allowed.
    NotAllowed(String),
    /// Something went wrong on the way (GitHub down, a code used twice…).
    Failed(anyhow::Error),
}

/// What the dashboard needs to ask GitHub about someone signing in.
pub struct GitHubSignIn<'a> {
    pub http: &'a reqwest::Client,
    pub web_url: &'a str,
    pub api_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

impl GitHubSignIn<'_> {
    /// Exchanges `code` for the user's token, learns the login and checks it against `users` and `orgs`
    /// (lower-case). The token is dropped before this returns.
    pub async fn sign_in(
        &self,
        code: &str,
        redirect_uri: &str,
        users: &[String],
        orgs: &[String],
    ) -> Result<String, Refused> {
        use anyhow::Context;
        let token = async {
            let response = self
                .http
                .post(format!("{}/login/oauth/access_token", self.web_url))
                .header(header::ACCEPT, "application/json")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::USER_AGENT, "nightshift")
                .body(form_encode(&[
                    ("client_id", self.client_id),
                    ("client_secret", self.client_secret),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                ]))
                .send()
                .await
                .context("asking GitHub for the user's token")?;
            let status = response.status();
            let answer: serde_json::Value = response.json().await.with_context(|| {
                format!("GitHub's answer to the code exchange ({status}) is not JSON")
            })?;
            answer["access_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(|t| octocrab::secrecy::SecretString::from(t.to_owned()))
                .with_context(|| {
                    format!(
                        "GitHub gave no token for the code ({status}, {}): sign in again",
                        answer["error"].as_str().unwrap_or("no error named")
                    )
                })
        }
        .await
        .map_err(Refused::Failed)?;
        let get = |path: String| {
            self.http
                .get(format!("{}{path}", self.api_url))
                .header(header::ACCEPT, "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .header(header::USER_AGENT, "nightshift")
                .bearer_auth(token.expose_secret())
                .send()
        };
        let me = async {
            let response = get("/user".into())
                .await
                .context("asking GitHub who signed in")?;
            let status = response.status();
            anyhow::ensure!(status.is_success(), "GitHub answered {status} to GET /user");
            let me: serde_json::Value = response.json().await.context("GET /user is not JSON")?;
            me["login"]
                .as_str()
                .filter(|l| valid_login(l))
                .map(str::to_owned)
                .context("GET /user has no login")
        }
        .await
        .map_err(Refused::Failed)?;
        let lower = me.to_lowercase();
        if users.contains(&lower) {
            return Ok(me);
        }
        for org in orgs.iter().filter(|o| valid_login(o)) {
            let response = get(format!("/user/memberships/orgs/{org}"))
                .await
                .map_err(|e| {
                    Refused::Failed(
                        anyhow::Error::new(e).context("asking GitHub about an organization"),
                    )
                })?;
            if response.status().is_success() {
                let membership: serde_json::Value = response.json().await.unwrap_or_default();
                if membership["state"] == "active" {
                    return Ok(me);
                }
            }
        }
        Err(Refused::NotAllowed(me))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// Sessions on a SQLite store of their own (the store's tests run the calls on Postgres too).
    async fn sessions() -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = crate::store::SqliteStore::connect(&url).await.unwrap();
        (dir, Sessions::new(Arc::new(store)))
    }

    #[tokio::test]
    async fn a_state_is_good_once_only_for_its_browser_under_its_secret_and_until_it_expires() {
        let (_dir, sessions) = sessions().await;
        let (a, b) = (random_hex(20), random_hex(20));
        let now = crate::now_ms();
        let state = new_state("secret", &a, now);
        assert_eq!(
            check_state("secret", &state, &a, now),
            Some(now + ms(STATE_LIFE))
        );
        // Another browser, another secret, no browser, a changed expiry or MAC, too late: none is good.
        assert!(
            !sessions
                .take_state("secret", &state, Some(&b))
                .await
                .unwrap()
        );
        assert!(
            !sessions
                .take_state("other", &state, Some(&a))
                .await
                .unwrap()
        );
        assert!(!sessions.take_state("secret", &state, None).await.unwrap());
        let (expiry, mac) = state.split_once('-').unwrap();
        let later = format!("{}-{mac}", expiry.parse::<i64>().unwrap() + 1);
        assert_eq!(check_state("secret", &later, &a, now), None);
        assert_eq!(check_state("secret", &format!("0{state}"), &a, now), None);
        let flipped = format!(
            "{expiry}-{}{}",
            &mac[..63],
            if mac.ends_with('0') { '1' } else { '0' }
        );
        assert_eq!(check_state("secret", &flipped, &a, now), None);
        assert_eq!(
            check_state("secret", &state, &a, now + ms(STATE_LIFE)),
            None
        );
        // One made on a replica whose clock runs a minute ahead is good here; one made far ahead of now (a
        // clock that jumped back) is not.
        let skewed = new_state("secret", &a, now + 60_000);
        assert!(check_state("secret", &skewed, &a, now).is_some());
        let ahead = new_state("secret", &a, now + 3_600_000);
        assert_eq!(check_state("secret", &ahead, &a, now), None);
        // The right browser takes it once; not twice.
        assert!(
            sessions
                .take_state("secret", &state, Some(&a))
                .await
                .unwrap()
        );
        assert!(
            !sessions
                .take_state("secret", &state, Some(&a))
                .await
                .unwrap()
        );
        // A cookie that is not one of ours is no browser.
        let odd = new_state("secret", "browser-a", now);
        assert_eq!(check_state("secret", &odd, "browser-a", now), None);
    }

    #[tokio::test]
    async fn sessions_are_found_by_their_whole_id_only() {
        let (_dir, sessions) = sessions().await;
        let id = sessions.create("octocat", false).await.unwrap();
        assert_eq!(id.len(), 64, "256 bits");
        let who = sessions.get(&id).await.unwrap().unwrap();
        assert_eq!(who.login, "octocat");
        assert!(!who.admin);
        assert!(sessions.get(&id[..63]).await.unwrap().is_none());
        assert!(sessions.get("").await.unwrap().is_none());
        // The store knows the id's hash only: the id itself (as a leaked backup would give it) finds nothing.
        let now = crate::now_ms();
        assert!(sessions.store.session(&id, now).await.unwrap().is_none());
        assert!(
            sessions
                .store
                .session(&digest(&id), now)
                .await
                .unwrap()
                .is_some()
        );
        // An id in capitals (the same hex, another string) is not the session.
        assert!(sessions.get(&id.to_uppercase()).await.unwrap().is_none());
        sessions.remove(&id).await.unwrap();
        assert!(sessions.get(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_post_needs_the_csrf_token_and_this_origin() {
        let (_dir, sessions) = sessions().await;
        let id = sessions.create("octocat", true).await.unwrap();
        let who = sessions.get(&id).await.unwrap().unwrap();
        let csrf = who.csrf().unwrap().to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://ns.example"),
        );
        assert!(post_allowed(
            &who,
            &headers,
            Some(&csrf),
            "http://ns.example"
        ));
        assert!(!post_allowed(
            &who,
            &headers,
            Some("nope"),
            "http://ns.example"
        ));
        assert!(!post_allowed(&who, &headers, None, "http://ns.example"));
        assert!(!post_allowed(
            &who,
            &headers,
            Some(&csrf),
            "https://ns.example"
        ));
        assert!(!post_allowed(
            &who,
            &HeaderMap::new(),
            Some(&csrf),
            "http://ns.example"
        ));
        let bearer = Identity {
            login: "token".into(),
            admin: true,
            session: None,
        };
        assert!(post_allowed(
            &bearer,
            &HeaderMap::new(),
            None,
            "http://ns.example"
        ));
    }

    #[tokio::test]
    async fn a_wrong_bearer_is_no_one_even_with_a_good_cookie() {
        let (_dir, sessions) = sessions().await;
        let id = sessions.create("octocat", false).await.unwrap();
        let token = octocrab::secrecy::SecretString::from("s3cret".to_owned());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
        );
        assert_eq!(
            identify(&sessions, Some(&token), &headers, COOKIE)
                .await
                .unwrap()
                .login,
            "octocat"
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer guess"),
        );
        assert!(
            identify(&sessions, Some(&token), &headers, COOKIE)
                .await
                .is_none()
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(
            identify(&sessions, Some(&token), &headers, COOKIE)
                .await
                .unwrap()
                .admin
        );
        assert!(identify(&sessions, None, &headers, COOKIE).await.is_none());
    }

    #[tokio::test]
    async fn behind_https_only_the_host_prefixed_cookie_names_a_session() {
        let (_dir, sessions) = sessions().await;
        let id = sessions.create("octocat", false).await.unwrap();
        let with = |cookie: String| {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
            headers
        };
        let secure = session_cookie_name(true);
        assert_eq!(secure, "__Host-nightshift_session");
        let plain = with(format!("{COOKIE}={id}"));
        assert!(identify(&sessions, None, &plain, &secure).await.is_none());
        let prefixed = with(format!("{secure}={id}"));
        let who = identify(&sessions, None, &prefixed, &secure).await.unwrap();
        assert_eq!(who.login, "octocat");
        assert!(identify(&sessions, None, &prefixed, COOKIE).await.is_none());
        assert_eq!(state_cookie_name(true), "__Host-nightshift_signin");
        assert_eq!(state_cookie_name(false), STATE_COOKIE);
    }

    /// A session outlives restarts: what it may do follows the config as it is now. A leaked static token,
    /// changed by the operator, signed whoever used it in for 12 more hours as an admin; so did an admin
    /// dropped from `admins`, or a user dropped from `users`.
    #[tokio::test]
    async fn a_session_ends_or_loses_its_rights_when_the_config_takes_them_away() {
        let (_dir, sessions) = sessions().await;
        let secret = |t: &str| Some(octocrab::secrecy::SecretString::from(t.to_owned()));
        let config = |token: &str, users: &[&str], orgs: &[&str], admins: &[&str]| {
            crate::config::DashboardConfig {
                token: secret(token),
                users: users.iter().map(|u| u.to_string()).collect(),
                orgs: orgs.iter().map(|u| u.to_string()).collect(),
                admins: admins.iter().map(|u| u.to_string()).collect(),
                ..Default::default()
            }
        };
        let who = |id: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
            );
            headers
        };
        let now = |access: &crate::config::DashboardConfig, id: &str| {
            let headers = who(id);
            let sessions = &sessions;
            let access = access.clone();
            async move {
                let found = identify(sessions, access.token.as_ref(), &headers, COOKIE).await?;
                still_allowed(found, &access)
            }
        };
        // Signed in with the token "old".
        let by_token = sessions.create(&token_login("old"), true).await.unwrap();
        let before = config("old", &[], &[], &[]);
        let signed = now(&before, &by_token).await.unwrap();
        assert_eq!((signed.login.as_str(), signed.admin), ("token", true));
        assert!(
            now(&config("new", &[], &[], &[]), &by_token)
                .await
                .is_none()
        );
        assert!(
            now(&crate::config::DashboardConfig::default(), &by_token)
                .await
                .is_none()
        );
        // A session of the static token made before sessions were bound to it.
        let unbound = sessions.create("token", true).await.unwrap();
        assert!(now(&before, &unbound).await.is_none());

        // An admin listed in `users`.
        let octocat = sessions.create("octocat", true).await.unwrap();
        let listed = config("old", &["octocat"], &[], &["octocat"]);
        assert!(now(&listed, &octocat).await.unwrap().admin);
        let demoted = config("old", &["octocat"], &[], &[]);
        let kept = now(&demoted, &octocat).await.unwrap();
        assert_eq!((kept.login.as_str(), kept.admin), ("octocat", false));
        assert!(
            now(&config("old", &["hubot"], &[], &[]), &octocat)
                .await
                .is_none()
        );
        // Let in by an organization: kept until the next sign-in checks the membership again.
        let by_org = config("old", &[], &["acme"], &["octocat"]);
        assert!(now(&by_org, &octocat).await.unwrap().admin);
    }
}
