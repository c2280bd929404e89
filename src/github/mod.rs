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
use crate::ids::InstallationId;

/// An authenticated client for one repository's installation, and the token git pushes with.
#[derive(Clone)]
pub struct RepoClient {
    pub api: Octocrab,
    token: SecretString,
}

impl RepoClient {
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }

    /// The credentials git uses with this client's token.
    pub fn git_auth(&self) -> crate::agent::git::GitAuth {
        crate::agent::git::GitAuth::token(self.token())
    }
}

/// An installation's client, and a lock held while its token is minted.
type Installation = (Octocrab, Mutex<()>);

/// Hands out [`RepoClient`]s.
pub struct GitHub {
    auth: Auth,
}

enum Auth {
    App {
        app: Octocrab,
        /// One client per installation, each with a lock so concurrent jobs mint its token once.
        installations: Mutex<HashMap<InstallationId, Arc<Installation>>>,
    },
    Token(RepoClient),
    None,
}

impl GitHub {
    pub fn new(config: &GithubConfig) -> Result<Arc<GitHub>> {
        let builder = || Octocrab::builder().base_uri(config.api_url.as_str());
        let auth = match &config.auth {
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
            GithubAuth::Token(token) => Auth::Token(RepoClient {
                api: builder()
                    .context("bad github.api_url")?
                    .personal_token(token.expose_secret().to_owned())
                    .build()
                    .context("building the GitHub client")?,
                token: token.clone(),
            }),
            GithubAuth::None => Auth::None,
        };
        Ok(Arc::new(GitHub { auth }))
    }

    /// nightshift's own login on GitHub when it runs as an App (`SLUG[bot]`), asked of GitHub.
    pub async fn app_bot_login(&self) -> Result<Option<String>> {
        let Auth::App { app, .. } = &self.auth else {
            return Ok(None);
        };
        let me: serde_json::Value = with_retry("asking GitHub which App this is", || {
            app.get("/app", None::<&()>)
        })
        .await?;
        Ok(me["slug"].as_str().map(|slug| format!("{slug}[bot]")))
    }

    /// True when nightshift can deliver results (false: dry run).
    pub fn has_credentials(&self) -> bool {
        !matches!(self.auth, Auth::None)
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

    /// A client for the installation an event came from (App auth) or the configured token.
    pub async fn client(&self, installation: Option<InstallationId>) -> Result<RepoClient> {
        match &self.auth {
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
                let crab = crab.clone();
                Ok(RepoClient { api: crab, token })
            }
            Auth::None => bail!(
                "no GitHub credentials configured: set NIGHTSHIFT_GITHUB_TOKEN, or github.app_id with a private key"
            ),
        }
    }
}

/// Whether a failed GitHub call is worth repeating: rate limits, server errors and network failures are;
/// a 4xx answer about the request itself is not.
pub fn is_transient(e: &octocrab::Error) -> bool {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            status == 429
                || status >= 500
                || (status == 403 && source.message.to_lowercase().contains("rate limit"))
        }
        octocrab::Error::Hyper { .. }
        | octocrab::Error::Service { .. }
        | octocrab::Error::Http { .. } => true,
        _ => false,
    }
}

/// An error from GitHub, worded for the job log.
pub fn describe(e: octocrab::Error) -> anyhow::Error {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            anyhow::anyhow!("GitHub answered {}: {}", source.status_code, source.message)
        }
        other => anyhow::anyhow!("calling GitHub failed: {other}"),
    }
}

/// The one retry helper for calls to GitHub: transient failures are tried again with backoff (0.5 s, 2 s,
/// 8 s), anything else fails at once. `what` names the call in errors and logs.
pub async fn with_retry<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = octocrab::Result<T>>,
{
    let mut delay = std::time::Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt < 4 && is_transient(&e) => {
                tracing::warn!(
                    attempt,
                    "{what}: {:#}; trying again in {delay:?}",
                    describe(e)
                );
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            Err(e) => return Err(describe(e).context(what.to_owned())),
        }
    }
}
