//! The pull request sink: the commit nightshift made of the agent's changes (kept in the mirror from the
//! agent's end) pushed to `nightshift/<trigger>/<number>` with `--force-with-lease` against what nightshift
//! last pushed there (never the default branch, never over commits someone else added: then the job's own
//! branch), and opened as a pull request, or the open one updated. When nothing changed, the job's comment
//! says so instead.

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::once::{self, Found};
use super::outcome::Proposal;
use super::{SinkContext, comment, texts};
use crate::github::GhErrorKind;
use crate::store::Output;

pub const KEY: &str = "pull_request";
pub const AUTHOR: (&str, &str) = ("nightshift", "nightshift@users.noreply.github.com");

/// The branch a trigger's changes for an issue or pull request go to.
pub fn branch_name(trigger: &str, number: Option<u64>, job: crate::ids::JobId) -> String {
    match number {
        Some(n) => format!("nightshift/{trigger}/{n}"),
        None => format!("nightshift/{trigger}/job-{job}"),
    }
}

/// The branch the pull request asks to merge into: for a job about a pull request of this repository, that
/// pull request's branch (the fix is proposed to it, built on its head); otherwise the default branch.
pub fn base_branch(spec: &crate::trigger::JobSpec) -> String {
    match &spec.pull {
        Some(pull) if !pull.from_fork && !pull.head_ref.is_empty() => pull.head_ref.clone(),
        _ => spec.default_branch.clone(),
    }
}

pub async fn deliver(ctx: &SinkContext<'_>, proposal: &Proposal) -> Result<Output> {
    let spec = ctx.spec;
    let Some(commit) = proposal.commit.as_deref() else {
        let body = texts::no_changes_comment(&spec.trigger, ctx.job, &proposal.message);
        return comment::say(ctx, &body).await;
    };
    if let Some(done) = ctx.store.find_output(ctx.job, KEY).await?
        && !done.pending
    {
        return Ok(done);
    }
    let repo = &spec.repo;
    let base = base_branch(spec);
    let mut branch = branch_name(&spec.trigger, spec.number, ctx.job);
    let Some(client) = ctx.client else {
        let line = format!(
            "dry run (no GitHub credentials): would push {commit} to {branch} and open a pull request on {repo} into {base}"
        );
        return ctx.dry_run("pull_request", KEY, vec![line]).await;
    };
    if !ctx.workspaces.has_job_commit(repo, ctx.job, commit).await {
        bail!(
            "the commit made of the agent's changes ({commit}) is no longer in the repository's mirror"
        );
    }

    // The branch: nightshift's, pushed over only where it is still what nightshift last pushed.
    let auth = ctx.git_auth().await?;
    let mut expect = None;
    let mut pushed = false;
    for own_branch in [false, true] {
        if own_branch {
            branch = format!("{branch}-job-{}", ctx.job);
        }
        if branch == spec.default_branch || branch == base {
            bail!("refusing to push to `{branch}`, the pull request's base");
        }
        let tip = ctx
            .workspaces
            .remote_tip(repo, &spec.clone_url, &branch, &auth)
            .await?;
        let last = ctx.store.last_push(&repo.to_string(), &branch).await?;
        match tip {
            Some(tip) if tip == commit => {
                pushed = true;
                break;
            }
            None => break,
            Some(tip) if Some(&tip) == last.as_ref() => {
                expect = Some(tip);
                break;
            }
            Some(tip) => {
                if own_branch {
                    bail!(
                        "the job's own branch {branch} has commits nightshift did not push ({tip})"
                    );
                }
                ctx.log(format!(
                    "{branch} has commits nightshift did not push (its tip is {tip}): they are kept, and this \
                     job's changes go to a branch of its own"
                ))
                .await;
            }
        }
    }
    if !pushed {
        ctx.fence().await?;
        ctx.workspaces
            .push(
                repo,
                &spec.clone_url,
                ctx.job,
                commit,
                &branch,
                expect.as_deref(),
                &auth,
            )
            .await
            .with_context(|| format!("pushing {branch}"))?;
        ctx.log(format!("pushed {commit} to {branch}")).await;
    }
    ctx.store
        .record_push(&repo.to_string(), &branch, commit, ctx.job)
        .await?;

    // The pull request: the open one for the branch is updated (a re-run's new description), or one opened.
    let title = texts::pull_request_title(
        spec.output_title.as_deref().or(spec.title.as_deref()),
        spec.number,
    );
    let body = texts::pull_request_body(
        &spec.trigger,
        ctx.job,
        spec.output_body.as_deref(),
        &proposal.message,
        spec.number,
        !spec.is_pull_request,
    );
    let head = format!("{}:{branch}", repo.owner());
    let find = || async {
        let open = client
            .get_all(
                "looking for the branch's open pull request",
                &format!("/repos/{repo}/pulls?state=open&head={}", urlencode(&head)),
                100,
            )
            .await?;
        Ok(open.first().map(Found::from_json))
    };
    if let Some(open) = find().await? {
        let number = open.id.context("GitHub's pull request has no number")?;
        ctx.log(format!(
            "found the branch's open pull request #{number}: updating its description"
        ))
        .await;
        ctx.fence().await?;
        client
            .patch(
                "updating the pull request's description",
                &format!("/repos/{repo}/pulls/{number}"),
                &json!({ "title": texts::scrub(&title), "body": body }),
            )
            .await?;
        return ctx
            .record("pull_request", KEY, open.url, Some(number))
            .await;
    }
    // Verification still failed and the trigger wants the pull request all the same: a draft, said so in its
    // title and labelled.
    let (title, draft) = match &proposal.verify_failed {
        Some(step) => (format!("[failing `{step}`] {title}"), true),
        None => (title, spec.draft),
    };
    let request = json!({
        "title": texts::scrub(&title),
        "head": branch,
        "base": base,
        "body": body,
        "draft": draft,
    });
    let opened = once::create(ctx, "pull_request", KEY, find, || async {
        match client
            .post(
                "opening the pull request",
                &format!("/repos/{repo}/pulls"),
                &request,
            )
            .await
        {
            Ok(v) => Ok(Found::from_json(&v)),
            // An earlier call opened it after all (its answer was lost).
            Err(e)
                if e.kind == GhErrorKind::Refused
                    && e.status == Some(422)
                    && e.message.contains("already exists") =>
            {
                match find().await {
                    Ok(Some(found)) => Ok(found),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    })
    .await?;
    if proposal.verify_failed.is_some()
        && let Some(number) = opened.github_id
    {
        ctx.fence().await?;
        client
            .post_repeatable(
                "labelling the pull request as failing verification",
                &format!("/repos/{repo}/issues/{number}/labels"),
                &json!({ "labels": [VERIFY_FAILED_LABEL] }),
            )
            .await?;
    }
    Ok(opened)
}

/// The label of a pull request opened although its verify steps failed (`verify_fail: draft`).
pub const VERIFY_FAILED_LABEL: &str = "nightshift: verification failed";

/// `text` for a URL's query (percent-encoded: a branch may hold `&`, `#`, `+`).
pub fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
