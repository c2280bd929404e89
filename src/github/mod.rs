//! GitHub API clients: one per installation (GitHub App auth, installation tokens cached by octocrab until
//! they near expiry) or one for a configured token; plus the credentials git needs to push.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId as OctoInstallationId};
use octocrab::secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::config::{GithubAuth, GithubConfig};
use crate::ids::{InstallationId, RepoName};

pub mod call;

pub use call::{CallSettings, GhError, GhErrorKind, gh_error};
use serde_json::Value;

/// An authenticated client for one repository's installation, and the token git pushes with.
///
/// A job's client ([`GitHub::job_client`], App auth) holds a token minted for the job: scoped to its one
/// repository and the permissions its output needs, and minted again (by [`RepoClient::refresh`], which
/// [`RepoClient::git_auth`] and the worker call right before they use it) once little of its life is left.
#[derive(Clone)]
pub struct RepoClient {
    current: Arc<std::sync::Mutex<Current>>,
    /// How to mint the next token; None for a token that cannot be minted again (token mode, or the
    /// installation-wide client octocrab refreshes itself).
    scope: Option<Arc<Scope>>,
    settings: Arc<CallSettings>,
}

struct Current {
    api: Octocrab,
    token: SecretString,
    /// When the token stops working (None: unknown or never).
    expires_at: Option<jiff::Timestamp>,
    /// When it was minted.
    minted_at: jiff::Timestamp,
}

/// What a job's tokens are minted for.
struct Scope {
    app: Octocrab,
    installation: InstallationId,
    repo: RepoName,
    permissions: Permissions,
    /// Held while a token is minted, so concurrent callers mint once.
    minting: Mutex<()>,
    settings: Arc<CallSettings>,
}

/// The permissions a job's token carries: what its output needs, and no more.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Permissions(pub std::collections::BTreeMap<&'static str, &'static str>);

impl Permissions {
    /// `contents: write, issues: write, ...`, for the job log.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How long GitHub's installation tokens live.
const TOKEN_LIFE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// A token is minted again when less than this of its life is left (or a quarter of its whole life, when
/// that is shorter: tokens that live minutes, as in tests).
pub const REFRESH_MARGIN: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl RepoClient {
    fn fixed(api: Octocrab, token: SecretString, settings: Arc<CallSettings>) -> RepoClient {
        RepoClient {
            settings,
            current: Arc::new(std::sync::Mutex::new(Current {
                api,
                token,
                expires_at: None,
                minted_at: jiff::Timestamp::now(),
            })),
            scope: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API client, with the current token.
    pub fn api(&self) -> Octocrab {
        self.lock().api.clone()
    }

    /// How calls are made (timeouts, the API's URL).
    pub fn settings(&self) -> &CallSettings {
        &self.settings
    }

    /// One call (see [`call::request`]).
    async fn request(
        &self,
        what: &str,
        verb: call::Verb,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Value, GhError> {
        // Whatever a body carries, no secret nightshift knows leaves in it: the sinks redact what they
        // post (`sink/texts.rs`), and this is the last place a body passes before GitHub, for any path
        // that missed it (the check run's update with annotations did).
        let scrubbed = body.map(|b| {
            let mut b = b.clone();
            crate::redact::global().redact_json(&mut b);
            b
        });
        call::request(
            &self.api(),
            &self.settings,
            what,
            verb,
            route,
            scrubbed.as_ref(),
        )
        .await
    }

    /// `GET route` (tried again on transient failures; see [`call`]).
    pub async fn get(&self, what: &str, route: &str) -> Result<Value, GhError> {
        self.request(what, call::Verb::Get, route, None).await
    }

    /// Every page of a list, up to `max_items` items.
    pub async fn get_all(
        &self,
        what: &str,
        route: &str,
        max_items: usize,
    ) -> Result<Vec<Value>, GhError> {
        call::get_all(&self.api(), &self.settings, what, route, max_items).await
    }

    /// `POST route` that creates something: sent once unless GitHub said it did nothing.
    pub async fn post(&self, what: &str, route: &str, body: &Value) -> Result<Value, GhError> {
        self.request(what, call::Verb::Post, route, Some(body))
            .await
    }

    /// `POST route` whose repetition is harmless.
    pub async fn post_repeatable(
        &self,
        what: &str,
        route: &str,
        body: &Value,
    ) -> Result<Value, GhError> {
        self.request(what, call::Verb::PostRepeatable, route, Some(body))
            .await
    }

    /// `PATCH route` (an update; tried again on transient failures).
    pub async fn patch(&self, what: &str, route: &str, body: &Value) -> Result<Value, GhError> {
        self.request(what, call::Verb::Patch, route, Some(body))
            .await
    }

    /// `PATCH route` sent once, like a create.
    pub async fn patch_once(
        &self,
        what: &str,
        route: &str,
        body: &Value,
    ) -> Result<Value, GhError> {
        self.request(what, call::Verb::PatchOnce, route, Some(body))
            .await
    }

    /// `PUT route` (idempotent; tried again on transient failures).
    pub async fn put(&self, what: &str, route: &str, body: &Value) -> Result<Value, GhError> {
        self.request(what, call::Verb::Put, route, Some(body)).await
    }

    pub fn token(&self) -> String {
        self.lock().token.expose_secret().to_owned()
    }

    /// Whether the token has less than [`REFRESH_MARGIN`] (or a quarter of its life) left.
    fn stale(&self) -> bool {
        let current = self.lock();
        let Some(expires) = current.expires_at else {
            return false;
        };
        let life = expires.duration_since(current.minted_at);
        let margin = jiff::SignedDuration::try_from(REFRESH_MARGIN)
            .unwrap_or_default()
            .min(life / 4);
        jiff::Timestamp::now() + margin >= expires
    }

    /// Mints a new token when the current one is near its end (a job's client under App auth; others are
    /// left as they are). Returns a line for the job log when it minted one.
    pub async fn refresh(&self) -> Result<Option<String>> {
        let Some(scope) = &self.scope else {
            return Ok(None);
        };
        let _one_at_a_time = scope.minting.lock().await;
        if !self.stale() {
            return Ok(None);
        }
        let minted = scope.mint().await?;
        let line = minted.describe(scope);
        *self.lock() = minted;
        Ok(Some(line))
    }

    /// The credentials git uses, right now: call it right before a push, so a job that ran longer than its
    /// token lives pushes with a fresh one. Also returns a line for the job log when a token was minted.
    pub async fn fresh_git_auth(&self) -> Result<(crate::repo::git::GitAuth, Option<String>)> {
        let minted = self.refresh().await?;
        Ok((self.git_auth(), minted))
    }

    /// The credentials git uses with the current token, as it is.
    pub fn git_auth(&self) -> crate::repo::git::GitAuth {
        crate::repo::git::GitAuth::token(&self.token())
    }
}

impl Scope {
    /// Mints a token for the scope: `POST /app/installations/{id}/access_tokens` with the one repository and
    /// the permissions. The token is registered for redaction before anything else sees it.
    async fn mint(&self) -> Result<Current> {
        #[derive(serde::Deserialize)]
        struct Minted {
            token: String,
            expires_at: Option<String>,
        }
        let route = format!("/app/installations/{}/access_tokens", self.installation);
        let body = serde_json::json!({
            "repositories": [self.repo.name()],
            "permissions": self.permissions,
        });
        let what = format!(
            "minting a token for {} ({})",
            self.repo,
            self.permissions.describe()
        );
        let minted = call::request(
            &self.app,
            &self.settings,
            &what,
            call::Verb::PostRepeatable,
            &route,
            Some(&body),
        )
        .await?;
        let minted: Minted = serde_json::from_value(minted).with_context(|| what.clone())?;
        let expires_at = minted
            .expires_at
            .as_deref()
            .map(str::parse::<jiff::Timestamp>)
            .transpose();
        // Redacted from here on, until a while after it stops working (an hour when GitHub did not say).
        let life = match &expires_at {
            Ok(Some(t)) => std::time::Duration::try_from(t.duration_since(jiff::Timestamp::now()))
                .unwrap_or_default(),
            _ => TOKEN_LIFE,
        };
        crate::redact::global().add_until(&minted.token, Some(std::time::Instant::now() + life));
        let expires_at =
            expires_at.context("GitHub's token has an expires_at that is not a time")?;
        let api = self
            .app
            .user_access_token(minted.token.clone())
            .context("preparing the job's GitHub client")?;
        Ok(Current {
            api,
            token: SecretString::from(minted.token),
            expires_at,
            minted_at: jiff::Timestamp::now(),
        })
    }
}

impl Current {
    fn describe(&self, scope: &Scope) -> String {
        let until = self
            .expires_at
            .map(|t| format!(" valid until {}", t.strftime("%H:%M:%S UTC")))
            .unwrap_or_default();
        format!(
            "minted a GitHub token for {} only ({}){until}",
            scope.repo,
            scope.permissions.describe()
        )
    }
}

/// An installation's client, and a lock held while its token is minted.
type Installation = (Octocrab, Mutex<()>);

/// Hands out [`RepoClient`]s.
pub struct GitHub {
    /// How nightshift authenticates, swapped once when the App is set up in the browser
    /// ([`GitHub::use_app`]): clients already handed out keep the credentials they were made with.
    auth: std::sync::RwLock<Arc<Auth>>,
    settings: Arc<CallSettings>,
    /// The App's login (`SLUG[bot]`) learned when it was set up in the browser.
    learned_login: std::sync::OnceLock<String>,
}

// One value per process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Auth {
    App {
        app: Octocrab,
        /// One client per installation, each with a lock so concurrent jobs mint its token once.
        installations: Mutex<HashMap<InstallationId, Arc<Installation>>>,
    },
    Token(RepoClient),
    None,
}

impl Auth {
    fn build(auth: &GithubAuth, settings: &Arc<CallSettings>) -> Result<Auth> {
        // Connect and read timeouts on every call; octocrab retries nothing (its `retry` feature is off):
        // the one retry layer is `call`.
        let timeout = settings.timeout;
        let builder = || {
            Octocrab::builder()
                .set_connect_timeout(Some(timeout.min(std::time::Duration::from_secs(10))))
                .set_read_timeout(Some(timeout))
                .set_write_timeout(Some(timeout))
                .base_uri(settings.api_url.as_str())
        };
        Ok(match auth {
            GithubAuth::App {
                app_id,
                private_key_pem,
            } => {
                let key =
                    octocrab::EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
                        .context("the GitHub App private key is not an RSA key in PEM format")?;
                let app = builder()
                    .context("bad github.api_url")?
                    .app(AppId(*app_id), key)
                    .build()
                    .context("building the GitHub client")?;
                Auth::App {
                    app,
                    installations: Mutex::new(HashMap::new()),
                }
            }
            GithubAuth::Token(token) => Auth::Token(RepoClient::fixed(
                builder()
                    .context("bad github.api_url")?
                    .personal_token(token.expose_secret().to_owned())
                    .build()
                    .context("building the GitHub client")?,
                token.clone(),
                settings.clone(),
            )),
            GithubAuth::None => Auth::None,
        })
    }
}

impl GitHub {
    pub fn new(config: &GithubConfig) -> Result<Arc<GitHub>> {
        let settings = Arc::new(CallSettings {
            api_url: config.api_url.clone(),
            timeout: config.timeout,
            max_wait: CallSettings::default().max_wait,
        });
        let auth = Auth::build(&config.auth, &settings)?;
        Ok(Arc::new(GitHub {
            auth: std::sync::RwLock::new(Arc::new(auth)),
            settings,
            learned_login: std::sync::OnceLock::new(),
        }))
    }

    fn auth(&self) -> Arc<Auth> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The App's login learned when it was set up in the browser (`SLUG[bot]`), if it was.
    pub fn learned_login(&self) -> Option<&str> {
        self.learned_login.get().map(String::as_str)
    }

    /// From now on, authenticates as the GitHub App `app_id` with `private_key_pem` (the App set up in the
    /// browser, `crate::setup`): the next client handed out is the App's. The key is registered for
    /// redaction first.
    pub fn use_app(&self, app_id: u64, slug: &str, private_key_pem: SecretString) -> Result<()> {
        crate::redact::global().add(private_key_pem.expose_secret());
        let auth = Auth::build(
            &GithubAuth::App {
                app_id,
                private_key_pem,
            },
            &self.settings,
        )?;
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
        let _ = self.learned_login.set(format!("{slug}[bot]"));
        Ok(())
    }

    /// nightshift's own login on GitHub when it runs as an App (`SLUG[bot]`), asked of GitHub.
    pub async fn app_bot_login(&self) -> Result<Option<String>> {
        let auth = self.auth();
        let Auth::App { app, .. } = &*auth else {
            return Ok(None);
        };
        let me = call::request(
            app,
            &self.settings,
            "asking GitHub which App this is",
            call::Verb::Get,
            "/app",
            None,
        )
        .await?;
        Ok(me["slug"].as_str().map(|slug| format!("{slug}[bot]")))
    }

    /// True when nightshift can deliver results (false: dry run).
    pub fn has_credentials(&self) -> bool {
        !matches!(*self.auth(), Auth::None)
    }

    /// Whether nightshift runs as an App, waiting for it while there are no credentials yet (the App may be
    /// set up in the browser at any moment, without a restart): `Some(waited)` once it is an App, `None`
    /// under a token, which never becomes one.
    pub async fn app_ready(&self) -> Option<bool> {
        let mut waited = false;
        loop {
            match &*self.auth() {
                Auth::App { .. } => return Some(waited),
                Auth::None => {}
                _ => return None,
            }
            waited = true;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// [`GitHub::client`], or None in a dry run (no credentials): what sinks take.
    pub async fn client_if_any(
        &self,
        installation: Option<InstallationId>,
    ) -> Result<Option<RepoClient>> {
        if !self.has_credentials() {
            return Ok(None);
        }
        self.client(installation).await.map(Some)
    }

    /// A job's client: under App auth, with a token minted for the job, for `repo` only and the permissions
    /// `permissions` (what the job's output needs: `sink::permissions`), minted again when it nears its end
    /// ([`RepoClient::refresh`]); with a configured token, that token (a personal token cannot be scoped).
    /// None in a dry run. The second value is a line for the job log.
    pub async fn job_client(
        &self,
        installation: Option<InstallationId>,
        repo: &RepoName,
        permissions: Permissions,
    ) -> Result<Option<(RepoClient, String)>> {
        match &*self.auth() {
            Auth::None => Ok(None),
            Auth::Token(client) => Ok(Some((
                client.clone(),
                "GitHub access: the configured token (a personal token cannot be limited to one repository)"
                    .to_owned(),
            ))),
            Auth::App { app, .. } => {
                let Some(installation) = installation else {
                    bail!(
                        "the event carries no installation id, so the GitHub App cannot act on its repository"
                    );
                };
                let scope = Scope {
                    app: app.clone(),
                    installation,
                    repo: repo.clone(),
                    permissions,
                    minting: Mutex::new(()),
                    settings: self.settings.clone(),
                };
                let current = scope.mint().await?;
                let line = current.describe(&scope);
                Ok(Some((
                    RepoClient {
                        current: Arc::new(std::sync::Mutex::new(current)),
                        scope: Some(Arc::new(scope)),
                        settings: self.settings.clone(),
                    },
                    line,
                )))
            }
        }
    }

    /// A client for the installation an event came from (App auth) or the configured token.
    pub async fn client(&self, installation: Option<InstallationId>) -> Result<RepoClient> {
        match &*self.auth() {
            Auth::Token(client) => Ok(client.clone()),
            Auth::App { app, installations } => {
                let Some(id) = installation else {
                    bail!(
                        "the event carries no installation id, so the GitHub App cannot act on its repository"
                    );
                };
                let entry = {
                    let mut cache = installations.lock().await;
                    match cache.get(&id) {
                        Some(entry) => entry.clone(),
                        None => {
                            let crab = app
                                .installation(OctoInstallationId(id.0))
                                .context("preparing the installation client")?;
                            let entry = Arc::new((crab, Mutex::new(())));
                            cache.insert(id, entry.clone());
                            entry
                        }
                    }
                };
                let (crab, minting) = &*entry;
                let token = {
                    let _one_at_a_time = minting.lock().await;
                    crab.installation_token()
                        .await
                        .with_context(|| format!("getting an access token for installation {id}"))?
                };
                crate::redact::global().add_until(
                    token.expose_secret(),
                    Some(std::time::Instant::now() + TOKEN_LIFE),
                );
                Ok(RepoClient::fixed(
                    crab.clone(),
                    token,
                    self.settings.clone(),
                ))
            }
            Auth::None => bail!(
                "no GitHub credentials configured: set NIGHTSHIFT_GITHUB_TOKEN, or github.app_id with a private key"
            ),
        }
    }
}

/// An installation of the App, as `GET /app/installations` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppInstallation {
    pub id: i64,
    pub account: String,
    pub suspended: bool,
}

/// One delivery of the App's webhook, as `GET /app/hook/deliveries` lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct HookDelivery {
    /// The id to redeliver it by (each attempt has its own).
    pub id: i64,
    /// `X-GitHub-Delivery`: the same for every attempt.
    pub guid: String,
    pub delivered_at: String,
    #[serde(default)]
    pub redelivery: bool,
    /// The answer nightshift gave (0 or absent when it gave none).
    #[serde(default)]
    pub status_code: Option<i64>,
    pub event: String,
}

/// The most items one listing reads: pages of 100.
const MAX_LISTED: usize = 100_000;

impl GitHub {
    /// True when nightshift runs as a GitHub App.
    pub fn is_app(&self) -> bool {
        matches!(*self.auth(), Auth::App { .. })
    }

    /// The App's client (authenticated with its JWT), as the credentials are now (they change once, when
    /// the App is set up in the browser).
    fn app(&self) -> Option<Octocrab> {
        match &*self.auth() {
            Auth::App { app, .. } => Some(app.clone()),
            _ => None,
        }
    }

    /// Every installation of the App (`GET /app/installations`, with the App's JWT); None in token mode.
    pub async fn app_installations(&self) -> Result<Option<Vec<AppInstallation>>> {
        let Some(app) = self.app() else {
            return Ok(None);
        };
        let listed = call::get_all(
            &app,
            &self.settings,
            "listing the App's installations",
            "/app/installations",
            MAX_LISTED,
        )
        .await?;
        Ok(Some(
            listed
                .iter()
                .filter_map(|i| {
                    Some(AppInstallation {
                        id: i["id"].as_i64()?,
                        account: i["account"]["login"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        suspended: !i["suspended_at"].is_null(),
                    })
                })
                .collect(),
        ))
    }

    /// The full names of the repositories an installation gives access to (`GET /installation/repositories`
    /// with its token, every page).
    pub async fn installation_repos(&self, installation: InstallationId) -> Result<Vec<String>> {
        let client = self.client(Some(installation)).await?;
        let what = format!("listing the repositories of installation {installation}");
        let mut next = Some("/installation/repositories?per_page=100".to_owned());
        let mut names = Vec::new();
        // Bounded in pages as well as names: a list of empty pages that each name a next one ends too.
        let mut pages = 0;
        while let Some(route) = next.take() {
            pages += 1;
            if pages > MAX_LISTED / 100 {
                break;
            }
            let (page, link) = call::get_page(&client.api(), &self.settings, &what, &route).await?;
            let Some(repos) = page["repositories"].as_array() else {
                bail!("{what}: GitHub's answer has no `repositories` list");
            };
            names.extend(
                repos
                    .iter()
                    .filter_map(|r| r["full_name"].as_str().map(str::to_owned)),
            );
            if repos.is_empty() || names.len() >= MAX_LISTED {
                break;
            }
            next = link;
        }
        Ok(names)
    }

    /// The installation that gives the App access to `repo` (`GET /repos/{owner}/{repo}/installation`):
    /// None when it has none (404), or in token mode.
    pub async fn repo_installation(&self, repo: &RepoName) -> Result<Option<AppInstallation>> {
        let Some(app) = self.app() else {
            return Ok(None);
        };
        let what = format!("asking GitHub which installation covers {repo}");
        let route = format!("/repos/{repo}/installation");
        match call::request(&app, &self.settings, &what, call::Verb::Get, &route, None).await {
            Ok(i) => Ok(i["id"].as_i64().map(|id| AppInstallation {
                id,
                account: i["account"]["login"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                suspended: !i["suspended_at"].is_null(),
            })),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One page of the App's webhook deliveries, newest first (`GET /app/hook/deliveries`), from `cursor`
    /// (the route GitHub's `Link` named); with the next page's route. None in token mode.
    pub async fn hook_deliveries(
        &self,
        next: Option<&str>,
    ) -> Result<Option<(Vec<HookDelivery>, Option<String>)>> {
        let Some(app) = self.app() else {
            return Ok(None);
        };
        let route = next.unwrap_or("/app/hook/deliveries?per_page=100");
        let (page, link) = call::get_page(
            &app,
            &self.settings,
            "listing the App's webhook deliveries",
            route,
        )
        .await?;
        let items: Vec<HookDelivery> =
            serde_json::from_value(page).context("GitHub's list of webhook deliveries")?;
        Ok(Some((items, link)))
    }

    /// Asks GitHub to deliver a webhook delivery again (`POST /app/hook/deliveries/{id}/attempts`): it comes
    /// signed, through the webhook, like any other.
    pub async fn redeliver(&self, id: i64) -> Result<()> {
        let Some(app) = self.app() else {
            bail!("redelivering webhooks needs a GitHub App");
        };
        call::request(
            &app,
            &self.settings,
            &format!("asking GitHub to redeliver webhook delivery {id}"),
            call::Verb::PostRepeatable,
            &format!("/app/hook/deliveries/{id}/attempts"),
            None,
        )
        .await?;
        Ok(())
    }
}
