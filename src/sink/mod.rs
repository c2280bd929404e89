//! Sinks: where a job's result goes. [`comment`] posts the agent's message; [`pull_request`] turns its
//! changes into a branch and a pull request. Both are idempotent: a retried job finds what it already
//! delivered instead of delivering it twice.

pub mod comment;
pub mod github_object;
pub mod pull_request;
pub mod texts;

use std::sync::Arc;

use crate::agent::git::GitAuth;
use crate::github::RepoClient;
use crate::ids::JobId;
use crate::queue::JobSpec;
use crate::store::{LogStream, Output, Store};
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
