//! Sinks: where a job's result goes, exactly once.
//!
//! The worker stores how the agent's run ended (an [`outcome::Outcome`]) before anything is posted; then
//! [`deliver::deliver`] posts it, and can be run again after a crash, a restart or a GitHub outage without
//! running the agent again. Every create goes through [`once`]: recorded `pending` before the call, looked
//! for on GitHub by its hidden marker (in what nightshift's own account wrote) when an earlier call may
//! have created it, recorded `done` after. Updates (a progress comment edited, a check run completed) are
//! idempotent by themselves. Every side effect is fenced by the job's lease ([`SinkContext::fence`]): a
//! worker that lost its job posts nothing.

pub mod check_run;
pub mod comment;
pub mod deliver;
pub mod github_object;
pub mod once;
pub mod outcome;
pub mod policy;
pub mod pull_request;
pub mod secrets;
pub mod shape;
pub mod texts;

use std::sync::Arc;
use std::time::Duration;

use crate::github::{Permissions, RepoClient};
use crate::ids::JobId;
use crate::repo::git::GitAuth;
use crate::repo::workspace::Workspaces;
use crate::store::{Lease, LogStream, Output, Store};
use crate::trigger::JobSpec;
use crate::trigger::OutputKind;
use anyhow::{Result, bail};

/// What a sink needs to deliver one job's result.
pub struct SinkContext<'a> {
    pub job: JobId,
    pub spec: &'a JobSpec,
    pub store: &'a Arc<dyn Store>,
    /// None in a dry run (no GitHub credentials): results are logged and recorded, not posted.
    pub client: Option<&'a RepoClient>,
    /// nightshift's own GitHub login (`github.bot_login`, or learned at start), when known: only what its
    /// account wrote counts as what an earlier attempt posted.
    pub own_login: Option<&'a str>,
    /// The worker holding the job and its lease's length: every side effect checks the lease first.
    pub owner: &'a str,
    pub lease: Duration,
    /// Where the job's page is (`public_url`), for links.
    pub public_url: Option<&'a str>,
    pub workspaces: &'a Workspaces,
    /// The service's `limits:` (the job's trigger's own are laid over them).
    pub limits: &'a crate::trigger::Limits,
}

impl SinkContext<'_> {
    /// Checks, right before a side effect, that the job is still ours (and extends its lease): a worker
    /// whose lease expired while it waited on GitHub posts nothing, because another worker has the job.
    pub async fn fence(&self) -> Result<()> {
        match self
            .store
            .renew_lease(self.job, self.owner, self.lease)
            .await?
        {
            Lease::Held | Lease::CancelRequested => Ok(()),
            Lease::Lost => bail!(LostLease),
        }
    }

    /// The credentials for a push, right before it: the job's token, minted again if little of its life is
    /// left (said in the job log), so a job longer than a token lives still pushes.
    pub async fn git_auth(&self) -> Result<GitAuth> {
        let Some(client) = self.client else {
            return Ok(GitAuth::none());
        };
        let (auth, minted) = client.fresh_git_auth().await?;
        if let Some(line) = minted {
            self.log(format!("for the push: {line}")).await;
        }
        Ok(auth)
    }

    /// A line in the job log (a failure to write it is only logged).
    pub async fn log(&self, line: String) {
        tracing::info!("{line}");
        if let Err(e) = self
            .store
            .append_log(self.job, LogStream::Nightshift, &[line])
            .await
        {
            tracing::warn!("writing the job log failed: {e:#}");
        }
    }

    /// Records what the job delivered (under `key`, so a retry finds it) and returns it.
    pub async fn record(
        &self,
        kind: &str,
        key: &str,
        url: Option<String>,
        github_id: Option<u64>,
    ) -> Result<Output> {
        let output = Output {
            kind: kind.into(),
            key: key.into(),
            url,
            github_id,
            pending: false,
        };
        self.store.record_output(self.job, &output).await?;
        Ok(output)
    }

    /// Marks an output to be created again (what was recorded is gone from GitHub).
    pub async fn record_pending_again(&self, key: &str) -> Result<()> {
        self.store.delete_output(self.job, key).await
    }

    /// A dry run (no GitHub credentials): what would have been delivered goes to the job log, and the output
    /// is recorded without a URL.
    pub async fn dry_run(&self, kind: &str, key: &str, lines: Vec<String>) -> Result<Output> {
        if let Some(done) = self.store.find_output(self.job, key).await?
            && !done.pending
        {
            return Ok(done);
        }
        self.store
            .append_log(self.job, LogStream::Nightshift, &lines)
            .await?;
        self.record(kind, key, None, None).await
    }

    /// The job's page, when nightshift knows where it is served.
    pub fn job_url(&self) -> Option<String> {
        self.public_url
            .map(|base| format!("{base}/jobs/{}", self.job))
    }
}

/// The worker no longer holds the job (its lease expired and another worker took it): nothing more is
/// posted or recorded by this one.
#[derive(Debug)]
pub struct LostLease;

impl std::fmt::Display for LostLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the job's lease was lost: another worker has it now")
    }
}

impl std::error::Error for LostLease {}

/// What a job with `output` needs: it reads the repository (contents, metadata), and writes only what
/// its output creates: `contents` for a branch (pull_request), pull requests for a pull request or a
/// review, issues for a comment or an issue (comments on pull requests are issue comments), checks for
/// a check run. Progress and failure notes are comments, so every output may write issues.
pub fn permissions(output: OutputKind) -> Permissions {
    let mut p = std::collections::BTreeMap::new();
    p.insert("metadata", "read");
    p.insert("contents", "read");
    p.insert("issues", "write");
    match output {
        OutputKind::PullRequest => {
            p.insert("contents", "write");
            p.insert("pull_requests", "write");
        }
        OutputKind::Review => {
            p.insert("pull_requests", "write");
        }
        OutputKind::CheckRun => {
            p.insert("checks", "write");
        }
        OutputKind::Comment | OutputKind::Issue => {}
    }
    Permissions(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_token_carries_only_what_its_output_needs() {
        let p = |o| permissions(o).describe();
        assert_eq!(
            p(OutputKind::Comment),
            "contents: read, issues: write, metadata: read"
        );
        assert_eq!(
            p(OutputKind::Issue),
            "contents: read, issues: write, metadata: read"
        );
        assert_eq!(
            p(OutputKind::PullRequest),
            "contents: write, issues: write, metadata: read, pull_requests: write"
        );
        assert_eq!(
            p(OutputKind::Review),
            "contents: read, issues: write, metadata: read, pull_requests: write"
        );
        assert_eq!(
            p(OutputKind::CheckRun),
            "checks: write, contents: read, issues: write, metadata: read"
        );
    }
}
