//! The sinks that create one GitHub object from the agent's message: a pull request review, an issue, or a
//! check run. Each is recorded under its own key, so a retried job does not create it again.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{SinkContext, texts};
use crate::agent::result::AgentResult;
use crate::agent::workspace::Worktree;
use crate::github::with_retry;
use crate::store::Output;
use crate::trigger::OutputKind;

pub async fn deliver(
    ctx: &SinkContext<'_>,
    worktree: &Worktree,
    result: &AgentResult,
) -> Result<Output> {
    let message = result.message.as_str();
    let kind = ctx.spec.output;
    let key = kind.name();
    if let Some(done) = ctx.store.find_output(ctx.job, key).await? {
        return Ok(done);
    }
    let spec = ctx.spec;
    let repo = &spec.repo;
    let (route, mut body) = match kind {
        OutputKind::Review => {
            let number = spec
                .number
                .filter(|_| spec.is_pull_request)
                .context("a review needs a pull request, and this event is not about one")?;
            (
                format!("/repos/{repo}/pulls/{number}/reviews"),
                review_body(ctx, worktree, result),
            )
        }
        OutputKind::Issue => (
            format!("/repos/{repo}/issues"),
            json!({
                "title": spec.output_title.clone().unwrap_or_else(|| texts::issue_title(&spec.trigger, spec.title.as_deref())),
                "body": texts::issue_body(&spec.trigger, ctx.job, message, spec.number),
                "labels": spec.labels,
            }),
        ),
        OutputKind::CheckRun => {
            let summary = texts::fit(message.trim_end()).into_owned();
            let name = spec
                .check_name
                .clone()
                .unwrap_or_else(|| spec.trigger.clone());
            (
                format!("/repos/{repo}/check-runs"),
                json!({
                    "name": name,
                    "head_sha": worktree.commit,
                    "status": "completed",
                    "conclusion": "success",
                    "external_id": texts::marker(ctx.job),
                    "output": { "title": name, "summary": summary },
                }),
            )
        }
        OutputKind::Comment | OutputKind::PullRequest => {
            unreachable!("delivered by their own sinks")
        }
    };
    // Every string of the body (titles, inline comments too), the one place objects are posted from.
    texts::scrub_json(&mut body);
    let Some(client) = ctx.client else {
        let mut lines = vec![format!(
            "dry run (no GitHub credentials): would POST {route}:"
        )];
        lines.extend(
            serde_json::to_string_pretty(&body)?
                .lines()
                .map(str::to_owned),
        );
        return ctx.dry_run(key, key, lines).await;
    };
    let api = client.api();
    let created: Value = with_retry(&format!("creating the {key}"), || {
        api.post(route.as_str(), Some(&body))
    })
    .await?;
    let url = created["html_url"].as_str().map(str::to_owned);
    ctx.record(key, key, url).await
}

/// A review: the structured `review.json` when the agent wrote one (its summary, and its inline comments on
/// the diff), otherwise the agent's message.
fn review_body(ctx: &SinkContext<'_>, worktree: &Worktree, result: &AgentResult) -> Value {
    let (summary, comments) = match &result.review {
        Some(review) => (review.summary.as_str(), review.comments.as_slice()),
        None => (result.message.as_str(), &[][..]),
    };
    json!({
        "body": texts::agent_comment(&ctx.spec.trigger, ctx.job, summary, result.truncated),
        "event": "COMMENT",
        "commit_id": worktree.commit,
        "comments": comments,
    })
}
