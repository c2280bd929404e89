//! The dashboard at `/`, on the webhook's port: jobs as they run, a job's page with its log streaming live,
//! cancel and re-run for admins; deliveries with each trigger's verdict, the triggers and skills loaded with
//! their problems, and spend against the budgets ([`pages`]). Server-rendered pages that work without JavaScript; one small script
//! (served from the binary) only makes them live over server-sent events.
//!
//! Signed-out visitors see the sign-in page and nothing else: every data route and event stream asks for a
//! session (or the static token). Every value on a page is a stranger's text and goes through
//! [`html::text`]. See [`auth`] for sign-in, sessions and CSRF.

pub mod auth;
pub mod budgets;
pub mod catalog;
pub mod deliveries;
pub mod fragment;
pub mod html;
pub mod jobs;
pub mod limit;
pub mod pages;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{Config, DashboardConfig};
use crate::store::Store;
use auth::{Identity, Sessions};
use html::{escape, page};

/// Event streams open at once, over every visitor; past it a stream is refused with 503 (the pages still
/// work, without live updates).
pub const MAX_STREAMS: usize = 64;

/// How often a stream looks at the store.
pub const POLL: Duration = Duration::from_secs(1);

const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The dashboard's state.
pub struct Dashboard {
    pub store: Arc<dyn Store>,
    /// The service's configuration (budgets, skills) and its live trigger set, for the catalog pages.
    pub config: Config,
    pub triggers: Arc<crate::trigger::Live>,
    /// Repositories' own triggers as the dispatcher last read them (read-only here).
    pub repo_triggers: Arc<crate::trigger::repo::RepoTriggers>,
    pub access: DashboardConfig,
    /// Where people reach nightshift; none: the address the browser used (its `Host`).
    public_url: Option<String>,
    web_url: String,
    api_url: String,
    data_dir: PathBuf,
    pub sessions: Sessions,
    pub streams: Arc<tokio::sync::Semaphore>,
    http: reqwest::Client,
    /// Each job's agent (from its frozen spec, which never changes), for the jobs table.
    agents: std::sync::Mutex<std::collections::HashMap<i64, String>>,
    /// Sign-in attempts per client address and over all of them ([`limit`]).
    pub limiter: limit::Limiter,
}

impl Dashboard {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        triggers: Arc<crate::trigger::Live>,
        repo_triggers: Arc<crate::trigger::repo::RepoTriggers>,
    ) -> Arc<Dashboard> {
        crate::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(config.github.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with no options that can fail");
        Arc::new(Dashboard {
            sessions: Sessions::new(store.clone()),
            store,
            config: config.clone(),
            triggers,
            repo_triggers,
            access: config.dashboard.clone(),
            public_url: config.public_url.clone(),
            web_url: config.github.web_url.trim_end_matches('/').to_owned(),
            api_url: config.github.api_url.trim_end_matches('/').to_owned(),
            data_dir: config.data_dir.clone(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            http,
            agents: Default::default(),
            limiter: Default::default(),
        })
    }

    /// Who the request comes from, if anyone may.
    pub async fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        if !self.access.enabled() {
            return None;
        }
        let who = auth::identify(
            &self.sessions,
            self.access.token.as_ref(),
            headers,
            &auth::session_cookie_name(self.secure()),
        )
        .await?;
        auth::still_allowed(who, &self.access)
    }

    /// This service's address as the browser sees it: `public_url`, or `http://{Host}`.
    fn base_url(&self, headers: &HeaderMap) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .filter(|h| {
                        h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                    })
                    .unwrap_or("localhost");
                format!("http://{host}")
            }
        }
    }

    /// The origin a form of this service posts from.
    pub fn expected_origin(&self, headers: &HeaderMap) -> String {
        html::origin(&self.base_url(headers))
    }

    fn secure(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(crate::config::is_https)
    }

    fn session_cookie(&self, id: &str, max_age: u64) -> String {
        let secure = self.secure();
        crate::text::set_cookie(&auth::session_cookie_name(secure), id, "/", max_age, secure)
    }

    /// The cookie that binds a sign-in to this browser: sent back to `/auth` only, except behind https,
    /// where the `__Host-` prefix needs `Path=/`.
    fn state_cookie(&self, value: &str, max_age: u64) -> String {
        let secure = self.secure();
        let path = if secure { "/" } else { "/auth" };
        crate::text::set_cookie(
            &auth::state_cookie_name(secure),
            value,
            path,
            max_age,
            secure,
        )
    }

    /// The App's OAuth client: the configured one, or the one stored by the browser setup.
    fn oauth_client(&self) -> Option<(String, String)> {
        use octocrab::secrecy::ExposeSecret;
        if let (Some(id), Some(secret)) = (&self.access.client_id, &self.access.client_secret) {
            return Some((id.clone(), secret.expose_secret().to_owned()));
        }
        match crate::setup::load(&self.data_dir) {
            Ok(Some(app)) => Some((app.client_id, app.client_secret)),
            Ok(None) => None,
            Err(e) => {
                warn!("dashboard sign-in: {e:#}");
                None
            }
        }
    }

    /// Each job's agent, read once from its spec.
    pub async fn agent_of(&self, job: crate::ids::JobId) -> String {
        if let Some(agent) = self
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job.0)
        {
            return agent.clone();
        }
        let agent = match self.store.job_spec(job).await {
            Ok(Some(spec)) => jobs::spec_field(&spec, "agent").unwrap_or_default(),
            _ => return String::new(),
        };
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if agents.len() >= 10_000 {
            agents.clear();
        }
        agents.insert(job.0, agent.clone());
        agent
    }

    /// The answer when a sign-in was good but its session could not be stored.
    fn no_session(&self, e: anyhow::Error) -> Response {
        warn!("dashboard sign-in: storing the session failed: {e:#}");
        self.sign_in_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("Signing in is not possible right now (see the service's log): try again."),
        )
    }

    /// The page a signed-out visitor gets for any data route: how to sign in, or how to turn the
    /// dashboard on.
    pub fn sign_in_page(&self, status: StatusCode, note: Option<&str>) -> Response {
        let note = note
            .map(|n| format!("<p class=\"note\" id=\"note\">{}</p>\n", escape(n)))
            .unwrap_or_default();
        if !self.access.enabled() {
            return page(
                status,
                "The dashboard is off",
                None,
                &format!(
                    "{note}<p id=\"off\">No one may sign in yet, so nothing is shown. To turn the dashboard on, \
                     say who may in the service config:</p>\n<pre>dashboard:\n  users: [your-login]       \
                     # sign in with GitHub (the App's OAuth client)\n  orgs: [your-org]          \
                     # or every active member of these\n  admins: [your-login]      \
                     # who may also cancel and re-run\n  token: …                  \
                     # or a static token (NIGHTSHIFT_DASHBOARD_TOKEN)</pre>"
                ),
            );
        }
        let mut body = note;
        if !self.access.users.is_empty() || !self.access.orgs.is_empty() {
            if self.oauth_client().is_some() {
                body.push_str(
                    "<p><a class=\"button\" id=\"sign-in-github\" href=\"/auth/login\">Sign in with GitHub</a></p>\n",
                );
            } else {
                body.push_str(
                    "<p id=\"no-oauth\">Signing in with GitHub needs the App's OAuth client: set the App up in \
                     the browser, or set <code>dashboard.client_id</code> and <code>dashboard.client_secret</code> \
                     (NIGHTSHIFT_GITHUB_CLIENT_ID, NIGHTSHIFT_GITHUB_CLIENT_SECRET) for an App made by hand.</p>\n",
                );
            }
        }
        if self.access.token.is_some() {
            body.push_str(
                "<form method=\"post\" action=\"/auth/token\"><label>Dashboard token \
                 <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" required></label> \
                 <button type=\"submit\" id=\"token-sign-in\">Sign in</button></form>\n",
            );
        }
        page(status, "Sign in", None, &body)
    }
}

/// The dashboard's routes: `/`, `/jobs/{id}` (with `/log`, `/cancel`, `/retry`), `/events/jobs`,
/// `/auth/…` and `/static/…`. None of them is `/webhooks/…`, `/healthz`, `/readyz`, `/metrics` or `/setup`.
pub fn routes(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(jobs::list))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/log", get(jobs::log_events))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/retry", post(jobs::retry))
        .route("/events/jobs", get(jobs::list_events))
        .route("/deliveries", get(pages::deliveries))
        .route("/deliveries/{id}", get(pages::delivery))
        .route("/triggers", get(pages::triggers))
        .route("/budgets", get(pages::budgets))
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/token", post(token_sign_in))
        .route("/auth/logout", post(logout))
        .route("/static/dashboard.js", get(script))
        .route("/static/dashboard.css", get(style))
        // Signing in is rate-limited per client address.
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            limit::limit,
        ))
        .with_state(dashboard)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// A redirect (303: the browser follows with a GET) with extra headers.
pub fn see_other(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, v);
    }
    for cookie in cookies {
        if let Ok(v) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    html::secure_headers(headers);
    response
}

/// `GET /auth/login`: to GitHub's authorize page, with a `state` bound to this browser.
async fn login(State(dash): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if dash.access.users.is_empty() && dash.access.orgs.is_empty() {
        return dash.sign_in_page(StatusCode::NOT_FOUND, None);
    }
    let Some((client_id, client_secret)) = dash.oauth_client() else {
        return dash.sign_in_page(StatusCode::SERVICE_UNAVAILABLE, None);
    };
    let browser = auth::random_hex(20);
    let state = auth::new_state(&client_secret, &browser, crate::now_ms());
    let redirect_uri = format!("{}/auth/callback", dash.base_url(&headers));
    let location = format!(
        "{}/login/oauth/authorize?{}",
        dash.web_url,
        auth::form_encode(&[
            ("client_id", &client_id),
            ("state", &state),
            ("redirect_uri", &redirect_uri),
        ])
    );
    see_other(&location, &[dash.state_cookie(&browser, 600)])
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

/// A code as GitHub makes them: short, letters, digits, `-` and `_`.
fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 200
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `GET /auth/callback?code&state`: the user's token (used here, dropped), who they are, whether they may.
async fn callback(
    State(dash): State<Arc<Dashboard>>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let (Some(code), Some(state)) = (query.code, query.state) else {
        return dash.sign_in_page(
            StatusCode::BAD_REQUEST,
            Some("GitHub's answer is incomplete: sign in again."),
        );
    };
    let Some((client_id, client_secret)) = dash.oauth_client() else {
        return dash.sign_in_page(StatusCode::SERVICE_UNAVAILABLE, None);
    };
    let browser = auth::cookie(&headers, &auth::state_cookie_name(dash.secure()));
    // The state is taken (once, on whichever replica) before the code is looked at: a replayed callback or
    // two racing with one state sign in at most once.
    let taken = match dash
        .sessions
        .take_state(&client_secret, &state, browser.as_deref())
        .await
    {
        Ok(taken) => taken,
        Err(e) => {
            warn!("dashboard sign-in: marking a sign-in spent in the store failed: {e:#}");
            return dash.sign_in_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(
                    "Signing in is not possible right now (see the service's log): sign in again.",
                ),
            );
        }
    };
    if !taken || !valid_code(&code) {
        warn!("dashboard sign-in: a callback with a state this browser was not given was refused");
        return dash.sign_in_page(
            StatusCode::FORBIDDEN,
            Some("This answer from GitHub does not belong to a sign-in started in this browser (or it was used, or is older than ten minutes): sign in again."),
        );
    }
    let redirect_uri = format!("{}/auth/callback", dash.base_url(&headers));
    let github = auth::GitHubSignIn {
        http: &dash.http,
        web_url: &dash.web_url,
        api_url: &dash.api_url,
        client_id: &client_id,
        client_secret: &client_secret,
    };
    let clear = dash.state_cookie("", 0);
    match github
        .sign_in(&code, &redirect_uri, &dash.access.users, &dash.access.orgs)
        .await
    {
        Ok(login) => {
            let admin = dash.access.admins.contains(&login.to_lowercase());
            info!(%login, admin, "signed in to the dashboard with GitHub");
            match dash.sessions.create(&login, admin).await {
                Ok(id) => see_other(
                    "/",
                    &[
                        dash.session_cookie(&id, auth::SESSION_LIFE.as_secs()),
                        clear,
                    ],
                ),
                Err(e) => dash.no_session(e),
            }
        }
        Err(auth::Refused::NotAllowed(login)) => {
            warn!(%login, "dashboard sign-in refused: not in dashboard.users or a member of dashboard.orgs");
            dash.sign_in_page(
                StatusCode::FORBIDDEN,
                Some(&format!(
                    "{login} may not use this dashboard: it is for the users and organizations its config names."
                )),
            )
        }
        Err(auth::Refused::Failed(e)) => {
            warn!("dashboard sign-in failed: {e:#}");
            dash.sign_in_page(
                StatusCode::BAD_GATEWAY,
                Some("Signing in with GitHub failed (see the service's log): try again."),
            )
        }
    }
}

#[derive(Deserialize)]
struct TokenForm {
    token: Option<String>,
}

/// `POST /auth/token`: the sign-in form of the static token.
async fn token_sign_in(
    State(dash): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    use octocrab::secrecy::ExposeSecret;
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|o| o.eq_ignore_ascii_case(&dash.expected_origin(&headers)));
    let good = dash.access.token.as_ref().is_some_and(|t| {
        form.token
            .as_deref()
            .is_some_and(|given| auth::same(given.trim(), t.expose_secret()))
    });
    if !origin_ok || !good {
        warn!("dashboard sign-in with a wrong token refused");
        return dash.sign_in_page(
            StatusCode::FORBIDDEN,
            Some("That is not the dashboard's token."),
        );
    }
    let login = dash
        .access
        .token
        .as_ref()
        .map(|t| auth::token_login(t.expose_secret()))
        .unwrap_or_default();
    match dash.sessions.create(&login, true).await {
        Ok(id) => see_other(
            "/",
            &[dash.session_cookie(&id, auth::SESSION_LIFE.as_secs())],
        ),
        Err(e) => dash.no_session(e),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

/// `POST /auth/logout`.
async fn logout(
    State(dash): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return see_other("/", &[]);
    };
    if !auth::post_allowed(
        &who,
        &headers,
        form.csrf.as_deref(),
        &dash.expected_origin(&headers),
    ) {
        return page(
            StatusCode::FORBIDDEN,
            "Refused",
            None,
            "<p>That form did not come from this dashboard.</p>",
        );
    }
    if let Some((id, _)) = &who.session
        && let Err(e) = dash.sessions.remove(id).await
    {
        // Still signed in: say so rather than pretend.
        warn!("dashboard sign-out: deleting the session failed: {e:#}");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not signed out",
            None,
            "<p>Signing out failed (see the service's log): try again.</p>",
        );
    }
    see_other("/", &[dash.session_cookie("", 0)])
}
