//! Repository plumbing shared by the pipeline: the hardened way to run git ([`git`]) and the mirrors and
//! per-job worktrees ([`workspace`]). The GitHub client, the repositories' own triggers, the workers and
//! the sinks all use it; it depends on nothing of theirs.

pub mod git;
pub mod workspace;
