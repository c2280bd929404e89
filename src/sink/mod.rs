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
use crate::store::Store;

/// What a sink needs to deliver one job's result.
pub struct SinkContext<'a> {
    pub job: JobId,
    pub attempt: u32,
    pub spec: &'a JobSpec,
    pub store: &'a Arc<dyn Store>,
    /// None in a dry run (no GitHub credentials): results are logged and recorded, not posted.
    pub client: Option<&'a RepoClient>,
}

impl SinkContext<'_> {
    pub fn git_auth(&self) -> GitAuth {
        self.client
            .map(|c| GitAuth::token(c.token()))
            .unwrap_or_else(GitAuth::none)
    }
}
