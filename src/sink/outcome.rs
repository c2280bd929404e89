//! How a job's run ended, as stored in the outbox (`jobs.result`) before anything is posted: what the agent
//! proposes, or why there is nothing to propose. Delivery reads it back, after a restart too.

use serde::{Deserialize, Serialize};

use crate::agent::result::Review;
use crate::store::Usage;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ended", rename_all = "snake_case")]
pub enum Outcome {
    /// The agent finished: what it proposes to post.
    Done(Box<Proposal>),
    /// The job failed before there was anything to post.
    Failed {
        /// The whole error, for the job (redacted when stored).
        error: String,
        /// What may be said on GitHub ([`super::texts::Failure::public`]); None: an operator's problem.
        public: Option<String>,
    },
    /// A newer job of its concurrency group replaced it.
    Cancelled { reason: String },
}

/// What the agent left, as nightshift will post it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub message: String,
    pub truncated: bool,
    #[serde(default)]
    pub review: Option<Review>,
    /// The commit the agent worked on.
    pub head: String,
    /// The commit nightshift made of the agent's changes (in the repository's mirror), for a pull request.
    #[serde(default)]
    pub commit: Option<String>,
    /// `diff --stat` of that commit.
    #[serde(default)]
    pub stat: String,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The verify step that still failed after the last round, when the trigger opens the pull request as a
    /// draft anyway (`verify_fail: draft`).
    #[serde(default)]
    pub verify_failed: Option<String>,
}
