//! Who is signed in to the dashboard, and how they got there.
//!
//! **With GitHub**, through the App's OAuth client: `/auth/login` sends the browser to GitHub's authorize
//! page with a fresh `state` bound to a cookie of this browser (one use, ten minutes); `/auth/callback`
//! takes it back, exchanges the code for the user's token, asks who the user is (`GET /user`) and, unless
//! the login is listed in `dashboard.users`, whether they are an active member of one of `dashboard.orgs`
//! (`GET /user/memberships/orgs/{org}`, which needs the App's `members: read`). The token is then dropped:
//! it is never stored. **With the static token** (`dashboard.token`): `Authorization: Bearer` on each
//! request, or the sign-in form, which makes a session. Either way the token signs in as an admin.
//!
//! A session is a random 256-bit id in an `HttpOnly; SameSite=Lax; Path=/` cookie (`Secure` behind https),
//! kept here, in memory, for 12 hours (a restart signs everyone out). Each has its own CSRF token, which
//! every form that changes something carries and which is checked with the request's `Origin`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use octocrab::secrecy::ExposeSecret;

/// How long a session lasts.
pub const SESSION_LIFE: Duration = Duration::from_secs(12 * 60 * 60);

/// How long a sign-in with GitHub may take, from `/auth/login` to the callback.
const STATE_LIFE: Duration = Duration::from_secs(10 * 60);

/// At most this many sessions are kept (the oldest go first), and this many sign-ins outstanding.
const MAX_SESSIONS: usize = 10_000;
const MAX_STATES: usize = 256;

/// The session cookie.
pub const COOKIE: &str = "nightshift_session";

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

struct Session {
    login: String,
    admin: bool,
    csrf: String,
    expires: Instant,
}

struct Pending {
    browser: String,
    at: Instant,
}

/// The sessions and the sign-ins under way.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, Pending>>,
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

/// The value of cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

impl Sessions {
    /// A new session; returns its id.
    pub fn create(&self, login: &str, admin: bool) -> String {
        let id = random_hex(32);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            id.clone(),
            Session {
                login: login.to_owned(),
                admin,
                csrf: random_hex(32),
                expires: now + SESSION_LIFE,
            },
        );
        id
    }

    /// The session `id` names, if it is still good.
    pub fn get(&self, id: &str) -> Option<Identity> {
        if id.len() != 64 {
            return None;
        }
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let (key, session) = sessions.iter().find(|(k, _)| same(k, id))?;
        (session.expires > Instant::now()).then(|| Identity {
            login: session.login.clone(),
            admin: session.admin,
            session: Some((key.clone(), session.csrf.clone())),
        })
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// A new `state` for a sign-in started by `browser` (the value of its [`STATE_COOKIE`]).
    pub fn new_state(&self, browser: &str) -> String {
        let state = random_hex(20);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.at.elapsed() < STATE_LIFE);
        while pending.len() >= MAX_STATES {
            let oldest = pending
                .iter()
                .min_by_key(|(_, p)| p.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => pending.remove(&k),
                None => break,
            };
        }
        pending.insert(
            state.clone(),
            Pending {
                browser: browser.to_owned(),
                at: Instant::now(),
            },
        );
        state
    }

    /// Takes `state` (once, whatever the outcome) if `browser` started it and it is still good.
    pub fn take_state(&self, state: &str, browser: Option<&str>) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = pending.keys().find(|k| same(k, state)).cloned() else {
            return false;
        };
        let taken = pending.remove(&key).expect("found above");
        browser.is_some_and(|b| same(b, &taken.browser)) && taken.at.elapsed() < STATE_LIFE
    }
}

/// Who the request comes from: the static token as a bearer, or a good session cookie.
pub fn identify(
    sessions: &Sessions,
    token: Option<&octocrab::secrecy::SecretString>,
    headers: &HeaderMap,
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
    sessions.get(&cookie(headers, COOKIE)?)
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

    #[test]
    fn a_state_is_good_once_and_only_for_its_browser() {
        let sessions = Sessions::default();
        let state = sessions.new_state("browser-a");
        assert!(!sessions.take_state(&state, Some("browser-b")));
        // Taken by the wrong browser: gone for the right one too.
        assert!(!sessions.take_state(&state, Some("browser-a")));
        let state = sessions.new_state("browser-a");
        assert!(!sessions.take_state(&state, None));
        let state = sessions.new_state("browser-a");
        assert!(sessions.take_state(&state, Some("browser-a")));
        assert!(!sessions.take_state(&state, Some("browser-a")));
    }

    #[test]
    fn sessions_are_found_by_their_whole_id_only() {
        let sessions = Sessions::default();
        let id = sessions.create("octocat", false);
        assert_eq!(id.len(), 64, "256 bits");
        let who = sessions.get(&id).unwrap();
        assert_eq!(who.login, "octocat");
        assert!(!who.admin);
        assert!(sessions.get(&id[..63]).is_none());
        assert!(sessions.get("").is_none());
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn a_post_needs_the_csrf_token_and_this_origin() {
        let sessions = Sessions::default();
        let id = sessions.create("octocat", true);
        let who = sessions.get(&id).unwrap();
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

    #[test]
    fn a_wrong_bearer_is_no_one_even_with_a_good_cookie() {
        let sessions = Sessions::default();
        let id = sessions.create("octocat", false);
        let token = octocrab::secrecy::SecretString::from("s3cret".to_owned());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
        );
        assert_eq!(
            identify(&sessions, Some(&token), &headers).unwrap().login,
            "octocat"
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer guess"),
        );
        assert!(identify(&sessions, Some(&token), &headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(identify(&sessions, Some(&token), &headers).unwrap().admin);
        assert!(identify(&sessions, None, &headers).is_none());
    }
}
