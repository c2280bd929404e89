//! Setting the GitHub App up in a browser (GitHub's App manifest flow).
//!
//! `serve` started without App credentials and without a token prints a one-time setup URL
//! (`{public_url}/setup?token=…`). The page there POSTs the App's manifest (`deploy/github-app-manifest.yml`,
//! with this service's addresses and a fresh `state`) to GitHub, which creates the App and sends the browser
//! back to `/setup/callback?code=…&state=…`. The code is exchanged (`POST /app-manifests/{code}/conversions`)
//! for the App's id, private key, webhook secret and OAuth client, which are stored in the data dir
//! ([`CREDENTIALS_FILE`], mode 0600, written atomically) and used at once: webhooks are verified with the new
//! secret and jobs run as the App, without a restart. Later starts read that file ([`adopt_stored`]).
//!
//! What a stranger who finds the port can do: nothing. Every setup route answers 404 without the token
//! (compared in constant time) or, for the callback, without a `state` this service handed out in a session
//! that the same browser holds (a cookie); a `state` is used once. Once the App is set up, every setup route
//! is 404. Pages are `no-store`, carry a CSP that allows no script, no framing and form posts only to this
//! service and GitHub, and send no `Referer` (the token is in the page's URL).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use octocrab::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{Config, GithubAuth};
use crate::github::GitHub;
use crate::source::webhook::WebhookState;

/// The file in the data dir that holds the App set up in the browser.
pub const CREDENTIALS_FILE: &str = "github-app.json";

/// The App's manifest: exactly the permissions and events nightshift uses.
pub const MANIFEST: &str = include_str!("../deploy/github-app-manifest.yml");

/// How long a `state` handed out by the setup page stays good.
const STATE_LIFE: Duration = Duration::from_secs(60 * 60);

/// At most this many `state`s are outstanding (each page view makes one); the oldest go first.
const MAX_STATES: usize = 64;

const COOKIE: &str = "nightshift_setup";

/// The setup session cookie's name: `__Host-` prefixed behind https.
fn cookie_name(secure: bool) -> std::borrow::Cow<'static, str> {
    crate::text::host_cookie_name(COOKIE, secure)
}

/// What GitHub's conversion answers, as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct AppCredentials {
    pub app_id: u64,
    pub slug: String,
    /// The App's page on GitHub (where it is installed from).
    #[serde(default)]
    pub html_url: Option<String>,
    /// The account or organization that owns the App.
    #[serde(default)]
    pub owner: Option<String>,
    pub private_key_pem: String,
    pub webhook_secret: String,
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("app_id", &self.app_id)
            .field("slug", &self.slug)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl AppCredentials {
    fn register_secrets(&self) {
        let secrets = crate::redact::global();
        secrets.add(&self.private_key_pem);
        secrets.add(&self.webhook_secret);
        secrets.add(&self.client_secret);
    }
}

/// Where the App's credentials are kept.
pub fn credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CREDENTIALS_FILE)
}

/// The credentials stored by an earlier setup, if any. A file others may read is refused: its secrets
/// must be assumed known.
pub fn load(data_dir: &Path) -> Result<Option<AppCredentials>> {
    use std::os::unix::fs::MetadataExt;
    let path = credentials_path(data_dir);
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !metadata.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if metadata.mode() & 0o077 != 0 {
        bail!(
            "{} may be read by other users (mode {:o}): its secrets must be assumed known; make it 0600 \
             (chmod 600) after rotating them, or remove it and set the App up again",
            path.display(),
            metadata.mode() & 0o777
        );
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let credentials: AppCredentials = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not what nightshift stored there", path.display()))?;
    credentials.register_secrets();
    Ok(Some(credentials))
}

/// Writes the credentials to the data dir, atomically: a new file created 0600 before anything is written
/// to it, synced, renamed over the old one, and the folder synced.
pub fn store(data_dir: &Path, credentials: &AppCredentials) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = credentials_path(data_dir);
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).context("no randomness")?;
    let temporary = data_dir.join(format!(".{CREDENTIALS_FILE}.{}", hex::encode(nonce)));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(credentials)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(path)
}

/// Takes the credentials a browser setup stored into `config`, unless the configuration sets its own (which
/// win: said in the log). The stored webhook secret is accepted either way (beside any configured ones), so
/// deliveries of the App set up in the browser are not refused. Returns whether stored credentials exist.
pub fn adopt_stored(config: &mut Config) -> Result<bool> {
    let Some(stored) = load(&config.data_dir)? else {
        return Ok(false);
    };
    let path = credentials_path(&config.data_dir);
    match config.github.auth {
        GithubAuth::None => {
            info!(
                app_id = stored.app_id,
                slug = %stored.slug,
                "running as the GitHub App set up in the browser (credentials in {})",
                path.display()
            );
            config.github.auth = GithubAuth::App {
                app_id: stored.app_id,
                private_key_pem: SecretString::from(stored.private_key_pem.clone()),
            };
        }
        _ => info!(
            "the configured GitHub credentials win over the App stored in {} (App {}, `{}`)",
            path.display(),
            stored.app_id,
            stored.slug
        ),
    }
    config
        .github
        .webhook_secrets
        .push(SecretString::from(stored.webhook_secret));
    Ok(true)
}

/// `serve` may start when webhooks can be verified, or when it can be set up in the browser (no
/// credentials configured: webhooks are refused until the App exists).
pub fn require_secrets_or_setup(config: &Config) -> Result<()> {
    if matches!(config.github.auth, GithubAuth::None) || credentials_path(&config.data_dir).exists()
    {
        return Ok(());
    }
    config.require_webhook_secrets().map(|_| ())
}

/// The manifest as GitHub's form takes it: `deploy/github-app-manifest.yml` with this service's addresses.
pub fn manifest(public_url: &str) -> Result<serde_json::Value> {
    let mut manifest: serde_json::Value =
        serde_saphyr::from_str(MANIFEST).context("deploy/github-app-manifest.yml")?;
    manifest["url"] = public_url.into();
    manifest["hook_attributes"]["url"] = format!("{public_url}/webhooks/github").into();
    manifest["redirect_url"] = format!("{public_url}/setup/callback").into();
    // Where GitHub sends someone who signs in with the App's OAuth client (the dashboard's sign-in).
    manifest["callback_urls"] = serde_json::json!([format!("{public_url}/auth/callback")]);
    Ok(manifest)
}

/// A random value, hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the system has randomness");
    hex::encode(buf)
}

/// Constant-time equality of two secrets (their lengths are not secret).
fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A `state` handed out, and the browser session it belongs to.
struct Outstanding {
    session: String,
    at: Instant,
}

/// The setup flow's state.
pub struct Setup {
    token: SecretString,
    public_url: String,
    web_url: String,
    api_url: String,
    timeout: Duration,
    data_dir: PathBuf,
    github: Arc<GitHub>,
    webhook: Arc<WebhookState>,
    states: Mutex<HashMap<String, Outstanding>>,
    /// Held while a code is exchanged: one App is made, once.
    exchanging: tokio::sync::Mutex<()>,
    configured: AtomicBool,
}

impl Setup {
    /// The setup flow for a service with no GitHub credentials, with a fresh token. `public_url` is where
    /// GitHub and the browser reach this service.
    pub fn new(
        config: &Config,
        public_url: &str,
        github: Arc<GitHub>,
        webhook: Arc<WebhookState>,
    ) -> Arc<Setup> {
        let token = random_hex(32);
        crate::redact::global().add(&token);
        Arc::new(Setup {
            token: SecretString::from(token),
            public_url: public_url.trim_end_matches('/').to_owned(),
            web_url: config.github.web_url.clone(),
            api_url: config.github.api_url.trim_end_matches('/').to_owned(),
            timeout: config.github.timeout,
            data_dir: config.data_dir.clone(),
            github,
            webhook,
            states: Mutex::new(HashMap::new()),
            exchanging: tokio::sync::Mutex::new(()),
            configured: AtomicBool::new(false),
        })
    }

    /// The one-time setup URL (holds the token: print it once, never log it).
    pub fn url(&self) -> String {
        format!(
            "{}/setup?token={}",
            self.public_url,
            self.token.expose_secret()
        )
    }

    /// Whether the App has been set up (every setup route is then 404).
    pub fn configured(&self) -> bool {
        self.configured.load(Ordering::SeqCst)
    }

    fn token_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|t| same(t, self.token.expose_secret()))
    }

    /// A new `state` for `session`.
    fn new_state(&self, session: &str) -> String {
        let state = random_hex(20);
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|_, o| o.at.elapsed() < STATE_LIFE);
        while states.len() >= MAX_STATES {
            let oldest = states
                .iter()
                .min_by_key(|(_, o)| o.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => states.remove(&k),
                None => break,
            };
        }
        states.insert(
            state.clone(),
            Outstanding {
                session: session.to_owned(),
                at: Instant::now(),
            },
        );
        state
    }

    /// Takes `state` (once) if it was handed out to `session` and is still good.
    fn take_state(&self, state: &str, session: Option<&str>) -> bool {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = states.keys().find(|k| same(k, state)).cloned() else {
            return false;
        };
        let outstanding = &states[&key];
        let good = session.is_some_and(|s| same(s, &outstanding.session))
            && outstanding.at.elapsed() < STATE_LIFE;
        if good {
            states.remove(&key);
        }
        good
    }

    /// The origin of GitHub's web pages, for the CSP's `form-action`.
    fn web_origin(&self) -> String {
        let url = &self.web_url;
        let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
        match url[after_scheme..].find('/') {
            Some(i) => url[..after_scheme + i].to_owned(),
            None => url.clone(),
        }
    }

    fn page(
        &self,
        status: StatusCode,
        title: &str,
        body: &str,
        cookie: Option<String>,
    ) -> Response {
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\"><title>{title} · nightshift</title></head>\
             <body><main><h1>{title}</h1>\n{body}\n</main></body></html>\n",
            title = escape(title),
        );
        let mut response = (status, html).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        secure_headers(headers, &self.web_origin());
        if let Some(cookie) = cookie
            && let Ok(value) = HeaderValue::from_str(&cookie)
        {
            headers.insert(header::SET_COOKIE, value);
        }
        response
    }

    /// The form that sends the manifest to GitHub, for the account or an organization.
    fn create_form(&self, session: &str, organization: Option<&str>) -> Result<String> {
        let state = self.new_state(session);
        let manifest = manifest(&self.public_url)?.to_string();
        let (action, label) = match organization {
            Some(org) => (
                format!("{}/organizations/{org}/settings/apps/new", self.web_url),
                format!("Create the App for the organization {org}"),
            ),
            None => (
                format!("{}/settings/apps/new", self.web_url),
                "Create the App for my account".to_owned(),
            ),
        };
        Ok(format!(
            "<form method=\"post\" action=\"{action}?state={state}\">\
             <input type=\"hidden\" name=\"manifest\" value=\"{manifest}\">\
             <button type=\"submit\" id=\"create\">{label}</button></form>",
            action = escape(&action),
            manifest = escape(&manifest),
            label = escape(&label),
        ))
    }

    /// The setup session's cookie: behind https `__Host-` prefixed (so a sibling subdomain cannot plant
    /// one), which needs `Path=/`; else sent back to `/setup` only.
    fn cookie(&self, session: &str) -> String {
        let secure = self.secure();
        let path = if secure { "/" } else { "/setup" };
        crate::text::set_cookie(&cookie_name(secure), session, path, 3600, secure)
    }

    fn secure(&self) -> bool {
        crate::config::is_https(&self.public_url)
    }

    /// Exchanges the code for the App, stores it, and switches the service to it.
    async fn exchange(&self, code: &str) -> Result<AppCredentials> {
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building an HTTP client")?;
        let url = format!("{}/app-manifests/{code}/conversions", self.api_url);
        let response = client
            .post(&url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("user-agent", "nightshift")
            .send()
            .await
            .context("asking GitHub for the new App (POST /app-manifests/{code}/conversions)")?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "GitHub answered {status} to the code exchange (a code works once, for an hour): start again from the setup URL"
            );
        }
        let app: serde_json::Value = response
            .json()
            .await
            .context("GitHub's answer to the code exchange is not JSON")?;
        let text = |key: &str| -> Result<String> {
            app[key]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .with_context(|| format!("GitHub's answer has no `{key}`"))
        };
        let credentials = AppCredentials {
            app_id: app["id"]
                .as_u64()
                .context("GitHub's answer has no App id")?,
            slug: text("slug")?,
            html_url: app["html_url"].as_str().map(str::to_owned),
            owner: app["owner"]["login"].as_str().map(str::to_owned),
            private_key_pem: text("pem")?,
            webhook_secret: text("webhook_secret")?,
            client_id: text("client_id")?,
            client_secret: text("client_secret")?,
        };
        credentials.register_secrets();
        if !credentials
            .slug
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("GitHub's answer has a slug that is not one");
        }
        // Checked before anything is stored: a key that does not work must not become the service's.
        octocrab::EncodingKey::from_rsa_pem(credentials.private_key_pem.as_bytes())
            .context("GitHub's answer has a private key that is not an RSA key in PEM format")?;
        let path = store(&self.data_dir, &credentials)?;
        self.github.use_app(
            credentials.app_id,
            &credentials.slug,
            SecretString::from(credentials.private_key_pem.clone()),
        )?;
        self.webhook
            .secrets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(SecretString::from(credentials.webhook_secret.clone()));
        self.configured.store(true, Ordering::SeqCst);
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        info!(
            app_id = credentials.app_id,
            slug = %credentials.slug,
            "the GitHub App was set up in the browser; running as it now (credentials in {})",
            path.display()
        );
        Ok(credentials)
    }
}

/// The headers every setup page carries: not cached, no script, no framing, form posts only to this
/// service and GitHub, no `Referer` (the setup URL holds the token).
fn secure_headers(headers: &mut HeaderMap, web_origin: &str) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let csp = format!(
        "default-src 'none'; form-action 'self' {web_origin}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// Text for HTML, in an element or a quoted attribute.
pub use crate::text::escape_html as escape;

/// The setup routes: `GET /setup`, `POST /setup/organization`, `GET /setup/callback`.
pub fn routes(setup: Arc<Setup>) -> Router {
    Router::new()
        .route("/setup", get(start))
        .route("/setup/organization", post(organization))
        .route("/setup/callback", get(callback))
        .with_state(setup)
}

fn not_found() -> Response {
    let mut response = (StatusCode::NOT_FOUND, "Not Found").into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The setup session this browser holds (the cookie's name follows [`cookie_name`]).
fn session_of(setup: &Setup, headers: &HeaderMap) -> Option<String> {
    crate::text::cookie(headers, &cookie_name(setup.secure()))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn start(
    State(setup): State<Arc<Setup>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if setup.configured() || !setup.token_ok(query.token.as_deref()) {
        return not_found();
    }
    // The browser's session: kept when it has one, so an organization form posted later still matches.
    let (session, cookie) = match session_of(&setup, &headers) {
        Some(s) if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) => (s, None),
        _ => {
            let s = random_hex(20);
            let cookie = setup.cookie(&s);
            (s, Some(cookie))
        }
    };
    let account = match setup.create_form(&session, None) {
        Ok(form) => form,
        Err(e) => {
            return setup.page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Setup failed",
                &escape(&format!("{e:#}")),
                None,
            );
        }
    };
    let body = format!(
        "<p>nightshift has no GitHub App yet. Create one with exactly the permissions and events it uses; \
         GitHub sends you back here, and nightshift runs as the new App at once.</p>\n\
         <p>Its webhook will be <code>{hook}</code>.</p>\n\
         <h2>For your account</h2>\n{account}\n\
         <h2>For an organization</h2>\n\
         <form method=\"post\" action=\"/setup/organization\">\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <label>Organization <input name=\"org\" id=\"org\" required pattern=\"[A-Za-z0-9-]{{1,39}}\"></label> \
         <button type=\"submit\" id=\"for-org\">Next</button></form>",
        hook = escape(&format!("{}/webhooks/github", setup.public_url)),
        token = escape(setup.token.expose_secret()),
    );
    setup.page(
        StatusCode::OK,
        "Set up nightshift's GitHub App",
        &body,
        cookie,
    )
}

#[derive(Deserialize)]
struct OrganizationForm {
    token: Option<String>,
    org: Option<String>,
}

/// A GitHub account or organization name: letters, digits and single hyphens inside, at most 39.
fn valid_login(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 39
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

async fn organization(
    State(setup): State<Arc<Setup>>,
    headers: HeaderMap,
    Form(form): Form<OrganizationForm>,
) -> Response {
    if setup.configured() || !setup.token_ok(form.token.as_deref()) {
        return not_found();
    }
    let Some(session) = session_of(&setup, &headers) else {
        return setup.page(
            StatusCode::FORBIDDEN,
            "Start again",
            "<p>This browser has no setup session: open the setup URL again.</p>",
            None,
        );
    };
    let org = form.org.unwrap_or_default();
    if !valid_login(&org) {
        return setup.page(
            StatusCode::BAD_REQUEST,
            "Not an organization name",
            "<p>An organization's name has letters, digits and hyphens. Go back and try again.</p>",
            None,
        );
    }
    match setup.create_form(&session, Some(&org)) {
        Ok(form) => setup.page(
            StatusCode::OK,
            "Set up nightshift's GitHub App",
            &format!(
                "<p>You need to be an owner of {org} on GitHub.</p>\n{form}",
                org = escape(&org)
            ),
            None,
        ),
        Err(e) => setup.page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Setup failed",
            &escape(&format!("{e:#}")),
            None,
        ),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

/// A code or state as GitHub makes them: short, letters, digits, `-` and `_` (it goes into a URL path).
fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 200
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn callback(
    State(setup): State<Arc<Setup>>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    if setup.configured() {
        return not_found();
    }
    let (Some(code), Some(state)) = (query.code, query.state) else {
        return not_found();
    };
    if !valid_code(&code) || !setup.take_state(&state, session_of(&setup, &headers).as_deref()) {
        warn!("App setup: a callback with a state this browser was not given was refused");
        return setup.page(
            StatusCode::FORBIDDEN,
            "Not this setup's answer",
            "<p>This answer from GitHub does not belong to a setup started in this browser (or it was \
             used already, or is older than an hour). Open the setup URL again.</p>",
            None,
        );
    }
    let _one = setup.exchanging.lock().await;
    if setup.configured() {
        return not_found();
    }
    match setup.exchange(&code).await {
        Ok(app) => {
            let install = app
                .html_url
                .as_deref()
                .map(|u| {
                    format!(
                        "<p><a id=\"install\" href=\"{}/installations/new\">Install it on your repositories</a>.</p>",
                        escape(u)
                    )
                })
                .unwrap_or_default();
            setup.page(
                StatusCode::OK,
                "nightshift runs as your App",
                &format!(
                    "<p id=\"done\">The GitHub App <strong>{slug}</strong> (id {id}) was created; nightshift \
                     runs as it now. Its key and secrets are stored in the data dir.</p>\n{install}",
                    slug = escape(&app.slug),
                    id = app.app_id,
                ),
                None,
            )
        }
        Err(e) => {
            warn!("App setup failed: {e:#}");
            setup.page(
                StatusCode::BAD_GATEWAY,
                "Setup failed",
                &format!("<p>{}</p>", escape(&format!("{e:#}"))),
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_https_the_setup_cookie_carries_the_host_prefix() {
        assert_eq!(cookie_name(true), "__Host-nightshift_setup");
        assert_eq!(cookie_name(false), COOKIE);
        assert!(crate::config::is_https("HTTPS://ns.example.org"));
        assert!(!crate::config::is_https("http://ns.example.org"));
        assert!(!crate::config::is_https("https:/"));
    }

    #[test]
    fn the_manifest_carries_this_service_s_addresses_and_the_file_s_permissions() {
        let m = manifest("https://ns.example.org").unwrap();
        assert_eq!(
            m["hook_attributes"]["url"],
            "https://ns.example.org/webhooks/github"
        );
        assert_eq!(m["redirect_url"], "https://ns.example.org/setup/callback");
        assert_eq!(m["default_permissions"]["contents"], "write");
        assert_eq!(m["public"], false);
    }

    #[tokio::test]
    async fn switching_to_the_app_makes_credentials_and_the_bot_login_known() {
        let github = GitHub::new(&crate::config::GithubConfig {
            api_url: "http://127.0.0.1:9".into(),
            web_url: "http://127.0.0.1:9".into(),
            timeout: Duration::from_secs(1),
            bot_login: None,
            auth: GithubAuth::None,
            webhook_secrets: Vec::new(),
        })
        .unwrap();
        assert!(!github.has_credentials());
        assert!(github.learned_login().is_none());
        let key = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/test-app-key.pem"
        ))
        .unwrap();
        assert!(
            github
                .use_app(9, "ns", SecretString::from("not a key"))
                .is_err()
        );
        assert!(!github.has_credentials());
        github.use_app(9, "ns", SecretString::from(key)).unwrap();
        assert!(github.has_credentials());
        assert_eq!(github.learned_login(), Some("ns[bot]"));
    }

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<a href=\"x\" onclick='y'>&"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;"
        );
    }

    #[test]
    fn credentials_are_written_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let credentials = AppCredentials {
            app_id: 7,
            slug: "ns".into(),
            html_url: None,
            owner: None,
            private_key_pem: "pem".into(),
            webhook_secret: "hook".into(),
            client_id: "id".into(),
            client_secret: "secret".into(),
        };
        let path = store(dir.path(), &credentials).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path()).unwrap().unwrap().webhook_secret, "hook");
        // A file others may read is refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(dir.path()).is_err());
        assert!(!format!("{credentials:?}").contains("secret\""));
    }

    #[test]
    fn codes_and_logins_are_checked_before_they_reach_a_url() {
        assert!(valid_code("a1B2-c_3"));
        assert!(!valid_code("../../user"));
        assert!(!valid_code("a?b"));
        assert!(valid_login("octo-org"));
        assert!(!valid_login("octo/../x"));
        assert!(!valid_login("-x"));
    }
}
