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
}

/// Hands out [`RepoClient`]s.
pub struct GitHub {
    auth: Auth,
}

enum Auth {
    App {
        app: Octocrab,
        installations: Mutex<HashMap<InstallationId, Octocrab>>,
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

    /// True when nightshift can deliver results (false: dry run).
    pub fn has_credentials(&self) -> bool {
        !matches!(self.auth, Auth::None)
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
                let crab = {
                    let mut cache = installations.lock().await;
                    match cache.get(&id) {
                        Some(crab) => crab.clone(),
                        None => {
                            let crab = app
                                .installation(OctoInstallationId(id.0))
                                .context("preparing the installation client")?;
                            cache.insert(id, crab.clone());
                            crab
                        }
                    }
                };
                let token = crab
                    .installation_token()
                    .await
                    .with_context(|| format!("getting an access token for installation {id}"))?;
                Ok(RepoClient { api: crab, token })
            }
            Auth::None => bail!(
                "no GitHub credentials configured: set NIGHTSHIFT_GITHUB_TOKEN, or github.app_id with a private key"
            ),
        }
    }
}
