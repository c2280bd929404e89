//! The pull request sink: the agent's changes committed by "nightshift", pushed to
//! `nightshift/<trigger>/<number>` (never the default branch), and opened as a pull request that links the
//! issue. When nothing changed, a comment says so instead.

use anyhow::{Result, bail};
use octocrab::params;

use super::{SinkContext, comment, texts};
use crate::agent::workspace::Worktree;
use crate::github::with_retry;
use crate::store::{LogStream, Output};

const KEY: &str = "pull_request";
const AUTHOR: (&str, &str) = ("nightshift", "nightshift@users.noreply.github.com");

/// The branch a trigger's changes for an issue or pull request go to.
pub fn branch_name(trigger: &str, number: Option<u64>, job: crate::ids::JobId) -> String {
    match number {
        Some(n) => format!("nightshift/{trigger}/{n}"),
        None => format!("nightshift/{trigger}/job-{job}"),
    }
}

pub async fn deliver(ctx: &SinkContext<'_>, worktree: &Worktree, message: &str) -> Result<Output> {
    if let Some(done) = ctx.store.find_output(ctx.job, KEY).await? {
        return Ok(done);
    }
    let spec = ctx.spec;
    let branch = branch_name(&spec.trigger, spec.number, ctx.job);
    if branch == spec.default_branch {
        bail!("refusing to push to the default branch `{branch}`");
    }
    let title = texts::pull_request_title(spec.title.as_deref(), spec.number);
    let commit_message = texts::commit_message(&spec.trigger, &title, spec.number);
    // Built in the mirror from the worktree's files, never with the worktree's own git.
    let changes = worktree.commit_changes(&commit_message, AUTHOR).await?;
    if !changes.nested.is_empty() {
        const SHOWN: usize = 20;
        let mut lines: Vec<String> = changes
            .nested
            .iter()
            .take(SHOWN)
            .map(|p| format!("left out of the commit: {p} (a repository inside the worktree)"))
            .collect();
        if changes.nested.len() > SHOWN {
            lines.push(format!(
                "left out of the commit: {} more repositories inside the worktree",
                changes.nested.len() - SHOWN
            ));
        }
        ctx.store
            .append_log(ctx.job, LogStream::Nightshift, &lines)
            .await?;
    }
    let Some(commit) = changes.commit else {
        let body = texts::no_changes_comment(&spec.trigger, ctx.job, message);
        return comment::post(ctx, &body).await;
    };
    ctx.store
        .append_log(
            ctx.job,
            LogStream::Nightshift,
            &changes.stat.lines().map(str::to_owned).collect::<Vec<_>>(),
        )
        .await?;

    let repo = &spec.repo;
    let Some(client) = ctx.client else {
        let line = format!(
            "dry run (no GitHub credentials): would push {branch} and open a pull request on {repo}"
        );
        return ctx.dry_run("pull_request", KEY, vec![line]).await;
    };

    // The branch is ours alone: a retried job replaces what an earlier attempt pushed. The credentials
    // are taken now, right before the push (minted again when little of their life is left).
    let auth = ctx.git_auth().await?;
    worktree
        .push(&spec.clone_url, &commit, &branch, &auth)
        .await?;

    let api = client.api();
    let pulls = api.pulls(repo.owner(), repo.name());
    let head = format!("{}:{branch}", repo.owner());
    let open = with_retry("looking for an open pull request", || {
        pulls
            .list()
            .state(params::State::Open)
            .head(head.clone())
            .send()
    })
    .await?;
    let url = match open.items.first() {
        Some(pr) => pr.html_url.as_ref().map(|u| u.to_string()),
        None => {
            let body = texts::pull_request_body(
                &spec.trigger,
                ctx.job,
                message,
                spec.number,
                !spec.is_pull_request,
            );
            let pr = with_retry("opening the pull request", || {
                pulls
                    .create(&title, &branch, &spec.default_branch)
                    .body(body.clone())
                    .send()
            })
            .await?;
            pr.html_url.map(|u| u.to_string())
        }
    };
    ctx.record("pull_request", KEY, url).await
}
