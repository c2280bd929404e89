//! The GitHub App's installations and their repositories, kept in the store: from `installation` and
//! `installation_repositories` events as they come, and listed through the API at start and daily (events
//! missed while nightshift was down, or from before it ran). Schedules resolve a repository's installation
//! here ([`resolve`]), and `repos:` patterns match every installed repository.
//!
//! Token mode (no App) keeps none of this: a token has no installations.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use tracing::{info, warn};

use crate::github::GitHub;
use crate::ids::{InstallationId, RepoName};
use crate::store::{Installation, KnownRepo, Store};

/// How often the installations are listed again.
pub const RELIST_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// How long GitHub's "no installation covers this repository" is believed before it is asked again.
const NOT_INSTALLED_FOR: Duration = Duration::from_secs(60 * 60);

/// The full names in a payload's list (`repositories`, `repositories_added`, ...), those that are names.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["full_name"].as_str())
        .filter(|n| RepoName::parse(n).is_some())
        .map(str::to_owned)
        .collect()
}

/// Takes in an `installation` or `installation_repositories` delivery (verified, stored); other events are
/// left alone. Returns true when it was one of them.
pub async fn on_event(store: &dyn Store, event: &str, payload: &[u8]) -> Result<bool> {
    if event != "installation" && event != "installation_repositories" {
        return Ok(false);
    }
    let Ok(body) = serde_json::from_slice::<Value>(payload) else {
        return Ok(true);
    };
    let Some(id) = body["installation"]["id"].as_i64().filter(|id| *id > 0) else {
        warn!(
            event,
            "an installation event without an installation id; ignored"
        );
        return Ok(true);
    };
    let action = body["action"].as_str().unwrap_or_default();
    let installation = Installation {
        id,
        account: body["installation"]["account"]["login"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        suspended: !body["installation"]["suspended_at"].is_null(),
    };
    match (event, action) {
        ("installation", "deleted") => store.delete_installation(id).await?,
        ("installation", "created") => {
            store.upsert_installation(&installation).await?;
            store
                .replace_installed_repos(id, &names(&body["repositories"]))
                .await?;
        }
        ("installation", "suspend") => {
            store
                .upsert_installation(&Installation {
                    suspended: true,
                    ..installation
                })
                .await?
        }
        ("installation", "unsuspend") => {
            store
                .upsert_installation(&Installation {
                    suspended: false,
                    ..installation
                })
                .await?
        }
        ("installation", _) => store.upsert_installation(&installation).await?,
        ("installation_repositories", _) => {
            store.upsert_installation(&installation).await?;
            store
                .add_installed_repos(id, &names(&body["repositories_added"]))
                .await?;
            store
                .remove_installed_repos(id, &names(&body["repositories_removed"]))
                .await?;
        }
        _ => {}
    }
    info!(event, action, installation = id, "installations updated");
    Ok(true)
}

/// Lists every installation and its repositories through the API and makes the store's list that:
/// installations GitHub no longer lists are forgotten. Nothing in token mode. Returns how many repositories
/// are installed.
pub async fn sync(store: &dyn Store, github: &GitHub) -> Result<Option<usize>> {
    let Some(listed) = github.app_installations().await? else {
        return Ok(None);
    };
    let mut repos = 0;
    for installation in &listed {
        store
            .upsert_installation(&Installation {
                id: installation.id,
                account: installation.account.clone(),
                suspended: installation.suspended,
            })
            .await?;
        if installation.suspended {
            continue; // its token cannot be minted; its list is kept as it was
        }
        let names: Vec<String> = github
            .installation_repos(InstallationId(installation.id as u64))
            .await?
            .into_iter()
            .filter(|n| RepoName::parse(n).is_some())
            .collect();
        repos += names.len();
        store
            .replace_installed_repos(installation.id, &names)
            .await?;
    }
    for stored in store.installations().await? {
        if !listed.iter().any(|i| i.id == stored.id) {
            store.delete_installation(stored.id).await?;
        }
    }
    info!(
        installations = listed.len(),
        repositories = repos,
        "installations listed"
    );
    Ok(Some(repos))
}

/// The listing at start (App auth only; a failure is logged, and [`run`] tries again).
pub async fn first_sync(store: &dyn Store, github: &GitHub) {
    if !github.is_app() {
        return;
    }
    if let Err(e) = sync(store, github).await {
        warn!("listing the App's installations failed (tried again in a minute): {e:#}");
        FIRST_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether the listing at start failed, so [`run`] tries again soon.
static FIRST_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lists the installations again every [`RELIST_EVERY`] after the first listing ([`first_sync`], which the
/// schedules run before their first tick); a failed listing is tried again a minute later. App auth only.
pub async fn run(store: Arc<dyn Store>, github: Arc<GitHub>) {
    let Some(set_up_since) = github.app_ready().await else {
        return;
    };
    let mut wait = RELIST_EVERY;
    // An App set up in the browser since the start had no first listing: it gets one now.
    if !set_up_since {
        tokio::time::sleep(Duration::from_secs(60)).await;
        if !FIRST_FAILED.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(RELIST_EVERY - Duration::from_secs(60)).await;
        }
    }
    loop {
        match sync(&*store, &github).await {
            Ok(_) => wait = RELIST_EVERY,
            Err(e) => {
                warn!("listing the App's installations failed (tried again in a minute): {e:#}");
                wait = wait.min(Duration::from_secs(60));
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// GitHub's recent "not installed" answers, by lower-case name, so a schedule does not ask every tick.
static NOT_INSTALLED: LazyLock<Mutex<HashMap<String, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What a schedule needs to act on a repository under App auth: its installation, from the installed list
/// (`installed`, by lower-case name) or else asked of GitHub (`GET /repos/{owner}/{repo}/installation`,
/// the answer kept in the store), and, for a repository no delivery has shown yet, its clone URL, default
/// branch and name as GitHub spells them (`GET /repos/{owner}/{repo}`, kept as a known repository). None
/// when no installation covers it (said in the log once an hour).
pub async fn resolve(
    store: &dyn Store,
    github: &GitHub,
    name: &str,
    installed: &HashMap<String, crate::store::InstalledRepo>,
    known: Option<&KnownRepo>,
) -> Result<Option<KnownRepo>> {
    let key = name.to_lowercase();
    let Some(repo) = RepoName::parse(name) else {
        return Ok(None);
    };
    let installation = match installed.get(&key) {
        Some(i) => i.installation_id,
        None => {
            let asked = NOT_INSTALLED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .is_some_and(|at| at.elapsed() < NOT_INSTALLED_FOR);
            if asked {
                return Ok(None);
            }
            match github.repo_installation(&repo).await? {
                Some(i) if !i.suspended => {
                    store
                        .upsert_installation(&Installation {
                            id: i.id,
                            account: i.account.clone(),
                            suspended: false,
                        })
                        .await?;
                    store.add_installed_repos(i.id, &[name.to_owned()]).await?;
                    i.id
                }
                _ => {
                    NOT_INSTALLED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, Instant::now());
                    warn!(
                        repo = name,
                        "the GitHub App is not installed on {name} (or its installation is suspended), so its \
                         scheduled jobs are skipped"
                    );
                    return Ok(None);
                }
            }
        }
    };
    if let Some(known) = known {
        return Ok(Some(KnownRepo {
            installation_id: Some(installation),
            ..known.clone()
        }));
    }
    // Never seen in a delivery: GitHub says where it is, and how it spells it.
    let client = github
        .client(Some(InstallationId(installation as u64)))
        .await?;
    let got = client
        .get(
            &format!("looking up {repo}"),
            &format!("/repos/{}/{}", repo.owner(), repo.name()),
        )
        .await?;
    let full_name = got["full_name"]
        .as_str()
        .filter(|n| n.eq_ignore_ascii_case(name))
        .unwrap_or(name)
        .to_owned();
    let found = KnownRepo {
        full_name,
        installation_id: Some(installation),
        clone_url: got["clone_url"].as_str().unwrap_or_default().to_owned(),
        default_branch: got["default_branch"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    if found.clone_url.is_empty() {
        anyhow::bail!("GitHub's answer about {repo} has no clone_url");
    }
    store.upsert_repository(&found).await?;
    Ok(Some(found))
}

/// For `nightshift check`: the repositories the store lists as installed, read without changing anything
/// (the store is opened read-only and not migrated), when there is a SQLite store that has listed
/// installations. None when there is nothing to ask: no store file, a Postgres store (check stays offline),
/// a store from before installations were kept, or no installation listed yet.
pub async fn installed_offline(store_url: &str) -> Option<Vec<String>> {
    use sqlx::ConnectOptions;
    let options = store_url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .ok()?
        .read_only(true)
        .create_if_missing(false);
    if !options.get_filename().is_file() {
        return None;
    }
    let mut db = options.connect().await.ok()?;
    let installations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM installations")
        .fetch_one(&mut db)
        .await
        .ok()?;
    if installations == 0 {
        return None;
    }
    sqlx::query_scalar(
        "SELECT r.full_name FROM installation_repositories r
         JOIN installations i ON i.id = r.installation_id WHERE NOT i.suspended",
    )
    .fetch_all(&mut db)
    .await
    .ok()
}

/// `check`'s warnings: each repository named literally in a trigger's `repos:` (`named`: where the trigger
/// is, its name, the names it lists) that no installation in `installed` covers (names compared without
/// case). Takes plain names so this source does not read trigger files.
pub fn not_installed_warnings<'a>(
    named: impl IntoIterator<Item = (&'a std::path::Path, &'a str, Vec<String>)>,
    installed: &[String],
) -> Vec<String> {
    let installed: std::collections::HashSet<String> =
        installed.iter().map(|n| n.to_lowercase()).collect();
    let mut warnings = Vec::new();
    for (path, trigger, names) in named {
        for name in names {
            if !installed.contains(&name.to_lowercase()) {
                warnings.push(format!(
                    "{}: warning: repos: `{name}`: the GitHub App has no installation on this repository as far \
                     as the store knows, so trigger `{trigger}` cannot act on it (install the App on it, or check the name)",
                    path.display(),
                ));
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        (dir, SqliteStore::connect(&url).await.unwrap())
    }

    async fn installed(store: &SqliteStore) -> Vec<String> {
        store
            .installed_repos()
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{}={}", r.full_name, r.installation_id))
            .collect()
    }

    fn event(action: &str, extra: Value) -> Vec<u8> {
        let mut v = serde_json::json!({
            "action": action,
            "installation": { "id": 5, "account": { "login": "acme" }, "suspended_at": null },
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[tokio::test]
    async fn installation_events_keep_the_list_and_names_that_are_not_names_are_dropped() {
        let (_dir, store) = store().await;
        let created = event(
            "created",
            serde_json::json!({ "repositories": [
                { "full_name": "acme/app" },
                { "full_name": "acme/../../etc" },
                { "full_name": "no-slash" },
                { "full_name": 7 },
            ]}),
        );
        assert!(on_event(&store, "installation", &created).await.unwrap());
        assert_eq!(installed(&store).await, ["acme/app=5"]);

        let added = event(
            "added",
            serde_json::json!({
                "repositories_added": [{ "full_name": "acme/lib" }],
                "repositories_removed": [{ "full_name": "ACME/APP" }],
            }),
        );
        on_event(&store, "installation_repositories", &added)
            .await
            .unwrap();
        assert_eq!(installed(&store).await, ["acme/lib=5"]);

        on_event(
            &store,
            "installation",
            &event("suspend", serde_json::json!({})),
        )
        .await
        .unwrap();
        assert!(installed(&store).await.is_empty(), "suspended: cannot act");
        on_event(
            &store,
            "installation",
            &event("unsuspend", serde_json::json!({})),
        )
        .await
        .unwrap();
        assert_eq!(installed(&store).await, ["acme/lib=5"]);

        // Other events, and installation events that name no installation, change nothing.
        assert!(!on_event(&store, "issues", &created).await.unwrap());
        let nameless = br#"{"action":"deleted","installation":{"id":"5"}}"#;
        on_event(&store, "installation", nameless).await.unwrap();
        assert_eq!(installed(&store).await, ["acme/lib=5"]);

        on_event(
            &store,
            "installation",
            &event("deleted", serde_json::json!({})),
        )
        .await
        .unwrap();
        assert!(installed(&store).await.is_empty());
        assert!(store.installations().await.unwrap().is_empty());
    }
}
