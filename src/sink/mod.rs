//! Sinks: where a job's result goes. [`comment`] posts the agent's message; [`pull_request`] turns its
//! changes into a branch and a pull request. Both are idempotent: a retried job finds what it already
//! delivered instead of delivering it twice.

pub mod comment;
pub mod github_object;
pub mod policy;
pub mod pull_request;
pub mod texts;

use std::sync::Arc;

use crate::agent::git::GitAuth;
use crate::github::{Permissions, RepoClient};
use crate::ids::JobId;
use crate::queue::JobSpec;
use crate::store::{LogStream, Output, Store};
use crate::trigger::OutputKind;
use anyhow::Result;

/// What a sink needs to deliver one job's result.
pub struct SinkContext<'a> {
    pub job: JobId,
    pub attempt: u32,
    pub spec: &'a JobSpec,
    pub store: &'a Arc<dyn Store>,
    /// None in a dry run (no GitHub credentials): results are logged and recorded, not posted.
    pub client: Option<&'a RepoClient>,
    /// nightshift's own GitHub login (`github.bot_login`, or learned at start), when known: only its
    /// comments count as what an earlier attempt posted.
    pub own_login: Option<&'a str>,
}

impl SinkContext<'_> {
    /// The credentials for a push, right before it: the job's token, minted again if little of its life is
    /// left (said in the job log), so a job longer than a token lives still pushes.
    pub async fn git_auth(&self) -> Result<GitAuth> {
        let Some(client) = self.client else {
            return Ok(GitAuth::none());
        };
        let (auth, minted) = client.fresh_git_auth().await?;
        if let Some(line) = minted {
            self.store
                .append_log(
                    self.job,
                    LogStream::Nightshift,
                    &[format!("for the push: {line}")],
                )
                .await?;
        }
        Ok(auth)
    }

    /// Records what the job delivered (under `key`, so a retry finds it) and returns it.
    pub async fn record(&self, kind: &str, key: &str, url: Option<String>) -> Result<Output> {
        let output = Output {
            kind: kind.into(),
            key: key.into(),
            url,
        };
        self.store.record_output(self.job, &output).await?;
        Ok(output)
    }

    /// A dry run (no GitHub credentials): what would have been delivered goes to the job log, and the output
    /// is recorded without a URL.
    pub async fn dry_run(&self, kind: &str, key: &str, lines: Vec<String>) -> Result<Output> {
        self.store
            .append_log(self.job, LogStream::Nightshift, &lines)
            .await?;
        self.record(kind, key, None).await
    }
}

/// What a job with `output` needs: it reads the repository (contents, metadata), and writes only what
/// its output creates: `contents` for a branch (pull_request), pull requests for a pull request or a
/// review, issues for a comment or an issue (comments on pull requests are issue comments), checks for
/// a check run. Failure notes are comments, so every output that is about an issue or a pull request
/// may write one.
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
