//! Retention (`prune:` in nightshift.yml): what ended long enough ago is removed from the store, and the
//! folders of removed jobs, if any were left behind, from the data dir. The service runs it every hour;
//! `nightshift prune` on demand. Idempotent: replicas on one Postgres may run it at once.
//!
//! SQLite reuses the pages freed here for later writes; the file is not shrunk (no `VACUUM`, which would
//! hold the store's one writer for as long as it takes to copy the file).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{info, warn};

use super::Pipeline;
use crate::ids::RepoName;
use crate::repo::workspace::Workspaces;
use crate::store::{Pruned, Store};

/// How often the service prunes.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Prunes the store by the config's policy and removes the pruned jobs' folders and worktrees; with
/// `dry_run`, removes nothing and says what it would.
pub async fn prune(
    store: &dyn Store,
    config: &crate::config::Config,
    workspaces: &Workspaces,
    dry_run: bool,
) -> Result<Pruned> {
    let pruned = store.prune(config.prune, dry_run).await?;
    if dry_run {
        return Ok(pruned);
    }
    for (job, repo) in &pruned.jobs {
        // A job that ended normally left nothing; one whose worker died may have (each attempt its own
        // folder, `jobs/ID-ATTEMPT`, and its owner file).
        let prefix = format!("{job}-");
        let jobs_dir = config.data_dir.join("jobs");
        for entry in std::fs::read_dir(&jobs_dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let attempt = rest.strip_suffix(".owner").unwrap_or(rest);
            if attempt.is_empty() || !attempt.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = entry.path();
            // Never follows a link: `remove_tree` removes links, not what they point at.
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => crate::safe_fs::remove_tree_async(&path).await,
                _ => tokio::fs::remove_file(&path).await,
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("removing {} failed: {e}", path.display());
            }
        }
        if let Some(repo) = RepoName::parse(repo) {
            for attempt in workspaces.attempts_left(*job) {
                if let Err(e) = workspaces.discard(&repo, *job, attempt).await {
                    warn!(%job, "removing the pruned job's worktree failed: {e:#}");
                }
            }
        }
    }
    Ok(pruned)
}

/// The service's hourly prune (the first a minute after it starts: a service restarted more often than
/// hourly still prunes).
pub async fn run(pipeline: Arc<Pipeline>) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::time::sleep(wait).await;
        wait = EVERY;
        match prune(
            &*pipeline.store,
            &pipeline.config,
            &pipeline.workspaces,
            false,
        )
        .await
        {
            Ok(p) => info!(
                jobs = p.jobs.len(),
                log_lines = p.log_lines,
                deliveries = p.deliveries,
                payloads = p.payloads,
                "pruned"
            ),
            Err(e) => warn!("pruning the store failed: {e:#}"),
        }
    }
}
