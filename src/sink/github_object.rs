//! The sinks that create one GitHub object from the agent's proposal: a pull request review, or an issue
//! (one per `dedupe:` key while it is open). Each is created once ([`super::once`]).

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::once::{self, Found};
use super::outcome::Proposal;
use super::{SinkContext, shape, texts};
use crate::store::Output;

/// The pull request's review: the structured `review.json` when the agent wrote one (its summary, and its
/// inline comments on the diff), otherwise the agent's message; on the pull request's head commit as it was
/// when the job was matched.
pub async fn review(ctx: &SinkContext<'_>, proposal: &Proposal) -> Result<Output> {
    const KEY: &str = "review";
    let spec = ctx.spec;
    let repo = &spec.repo;
    let number = spec
        .number
        .filter(|_| spec.is_pull_request)
        .context("a review needs a pull request, and this event is not about one")?;
    let commit = spec
        .pull
        .as_ref()
        .map(|p| p.head_sha.clone())
        .or_else(|| spec.head_sha.clone())
        .unwrap_or_else(|| proposal.head.clone());
    let route = format!("/repos/{repo}/pulls/{number}/reviews");
    // Inline comments only on lines of the diff (GitHub refuses the whole review otherwise): the rest are
    // folded into the summary; repeats dropped.
    let (summary, comments) = match (&proposal.review, ctx.client) {
        (Some(review), Some(client)) => {
            let files = client
                .get_all(
                    "listing the pull request's files",
                    &format!("/repos/{repo}/pulls/{number}/files"),
                    3_000,
                )
                .await?;
            let files: Vec<(String, Option<String>)> = files
                .iter()
                .filter_map(|f| {
                    Some((
                        f["filename"].as_str()?.to_owned(),
                        f["patch"].as_str().map(str::to_owned),
                    ))
                })
                .collect();
            let shaped = shape::shape_review(review, &files);
            if shaped.folded + shaped.dropped > 0 {
                ctx.log(format!(
                    "review: {} inline comments kept, {} on lines outside the diff folded into the summary, {} repeats dropped",
                    shaped.comments.len(),
                    shaped.folded,
                    shaped.dropped
                ))
                .await;
            }
            let summary = if shaped.body_extra.is_empty() {
                review.summary.clone()
            } else {
                format!("{}\n\n{}", review.summary.trim_end(), shaped.body_extra)
            };
            (summary, shaped.comments)
        }
        (Some(review), None) => (review.summary.clone(), review.comments.clone()),
        (None, _) => (proposal.message.clone(), Vec::new()),
    };
    let mut body = json!({
        "body": texts::agent_comment(&spec.trigger, ctx.job, &summary, proposal.truncated),
        "event": "COMMENT",
        "commit_id": commit,
        "comments": comments.iter().map(shape::review_comment_json).collect::<Vec<_>>(),
    });
    texts::scrub_json(&mut body);
    let Some(client) = ctx.client else {
        return dry_run(ctx, KEY, &route, &body).await;
    };
    let marker = texts::marker(ctx.job);
    once::create(
        ctx,
        "review",
        KEY,
        || async {
            let Some(own) = ctx.own_login else {
                return Ok(None);
            };
            let reviews = client
                .get_all(
                    "listing the pull request's reviews",
                    &format!("/repos/{repo}/pulls/{number}/reviews"),
                    10_000,
                )
                .await?;
            Ok(reviews
                .iter()
                .find(|r| by(r, own) && ends_with_marker(r, &marker))
                .map(Found::from_json))
        },
        || async {
            client
                .post(
                    "posting the review",
                    &format!("/repos/{repo}/pulls/{number}/reviews"),
                    &body,
                )
                .await
                .map(|v| Found {
                    url: v["html_url"].as_str().map(str::to_owned),
                    id: v["id"].as_u64(),
                })
        },
    )
    .await
}

/// An issue with the agent's message. With a `dedupe:` key, an open issue nightshift filed under the same
/// key gets a comment instead, so a nightly job keeps one open issue.
pub async fn issue(ctx: &SinkContext<'_>, proposal: &Proposal) -> Result<Output> {
    const KEY: &str = "issue";
    let spec = ctx.spec;
    let repo = &spec.repo;
    let dedupe = spec
        .dedupe_key
        .as_deref()
        .filter(|k| !k.trim().is_empty())
        .map(|k| texts::dedupe_marker(&spec.trigger, k));
    let mut text = texts::issue_body(&spec.trigger, ctx.job, &proposal.message, spec.number);
    if let Some(marker) = &dedupe {
        text = texts::with_hidden_line(&text, marker);
    }
    let mut body = json!({
        "title": spec.output_title.clone().unwrap_or_else(|| texts::issue_title(&spec.trigger, spec.title.as_deref())),
        "body": text,
        "labels": spec.labels,
    });
    texts::scrub_json(&mut body);
    let Some(client) = ctx.client else {
        return dry_run(ctx, KEY, &format!("/repos/{repo}/issues"), &body).await;
    };
    if let Some(done) = ctx.store.find_output(ctx.job, KEY).await?
        && !done.pending
    {
        return Ok(done);
    }
    // nightshift's own open issues (and, for the job's own, closed ones too), newest first.
    let own_issues = |state: &'static str| async move {
        let Some(own) = ctx.own_login else {
            return Ok::<_, anyhow::Error>(Vec::new());
        };
        let issues = client
            .get_all(
                "listing nightshift's issues",
                &format!(
                    "/repos/{repo}/issues?state={state}&creator={}&sort=created&direction=desc",
                    super::pull_request::urlencode(own)
                ),
                1_000,
            )
            .await?;
        Ok(issues
            .into_iter()
            .filter(|i| i.get("pull_request").is_none_or(Value::is_null) && by(i, own))
            .collect::<Vec<_>>())
    };
    if let Some(marker) = &dedupe {
        let open = own_issues("open").await?;
        if let Some(existing) = open.iter().find(|i| {
            i["body"]
                .as_str()
                .is_some_and(|b| texts::has_dedupe_marker(b, marker))
        }) {
            let found = Found::from_json(existing);
            let number = found.id.context("GitHub's issue has no number")?;
            ctx.log(format!(
                "an open issue has the same dedupe key: #{number}; commenting on it instead of filing another"
            ))
            .await;
            let comment = texts::agent_comment(
                &spec.trigger,
                ctx.job,
                &proposal.message,
                proposal.truncated,
            );
            let job_marker = texts::marker(ctx.job);
            let posted = once::create(
                ctx,
                "issue_comment",
                "issue_comment",
                || super::comment::find(ctx, client, number, &job_marker),
                || async {
                    client
                        .post(
                            "commenting on the open issue",
                            &format!("/repos/{repo}/issues/{number}/comments"),
                            &json!({ "body": texts::scrub(&comment) }),
                        )
                        .await
                        .map(|v| Found::from_json(&v))
                },
            )
            .await?;
            return ctx
                .record("issue", KEY, posted.url.or(found.url), Some(number))
                .await;
        }
    }
    let marker = texts::marker(ctx.job);
    once::create(
        ctx,
        "issue",
        KEY,
        || async {
            Ok(own_issues("all")
                .await?
                .iter()
                .find(|i| ends_with_marker(i, &marker))
                .map(Found::from_json))
        },
        || async {
            client
                .post("filing the issue", &format!("/repos/{repo}/issues"), &body)
                .await
                .map(|v| Found::from_json(&v))
        },
    )
    .await
}

/// Written by `login` (GitHub's `user.login`).
fn by(object: &Value, login: &str) -> bool {
    object["user"]["login"]
        .as_str()
        .is_some_and(|l| l.eq_ignore_ascii_case(login))
}

/// Its body ends with the job's marker (nightshift's footer ends every body it writes with it; an agent
/// can quote another job's marker only inside its text, never after nightshift's footer).
fn ends_with_marker(object: &Value, marker: &str) -> bool {
    object["body"]
        .as_str()
        .is_some_and(|b| b.trim_end().ends_with(marker))
}

async fn dry_run(ctx: &SinkContext<'_>, key: &str, route: &str, body: &Value) -> Result<Output> {
    let mut lines = vec![format!(
        "dry run (no GitHub credentials): would POST {route}:"
    )];
    lines.extend(
        serde_json::to_string_pretty(body)?
            .lines()
            .map(str::to_owned),
    );
    ctx.dry_run(key, key, lines).await
}
