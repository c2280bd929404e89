//! The job's one comment on its issue or pull request: the progress note when the job starts, edited in
//! place with the result (output `comment`), a link to what was delivered, or why the job failed.

use anyhow::{Context, Result};
use serde_json::json;

use super::once::{self, Found};
use super::{SinkContext, texts};
use crate::store::Output;

/// The key the job's comment is recorded under.
pub const KEY: &str = "comment";

/// Makes the job's one comment say `body`: created once, edited after. `body` ends with the job's marker
/// (every text in `texts.rs` does).
pub async fn say(ctx: &SinkContext<'_>, body: &str) -> Result<Output> {
    let body = texts::scrub(body);
    let number = ctx.spec.number.context(
        "this event is not about an issue or pull request, so there is nothing to comment on",
    )?;
    let repo = &ctx.spec.repo;
    let Some(client) = ctx.client else {
        let mut lines = vec![format!(
            "dry run (no GitHub credentials): would comment on {repo}#{number}:"
        )];
        lines.extend(body.lines().map(str::to_owned));
        ctx.store
            .append_log(ctx.job, crate::store::LogStream::Nightshift, &lines)
            .await?;
        return ctx.record("comment", KEY, None, None).await;
    };
    if let Some(done) = ctx.store.find_output(ctx.job, KEY).await?
        && !done.pending
        && let Some(id) = done.github_id
    {
        ctx.fence().await?;
        let edited = client
            .patch(
                "editing the job's comment",
                &format!("/repos/{repo}/issues/comments/{id}"),
                &json!({ "body": body }),
            )
            .await;
        match edited {
            Ok(v) => {
                let found = Found::from_json(&v);
                return ctx
                    .record("comment", KEY, found.url.or(done.url), Some(id))
                    .await;
            }
            // Someone deleted it: a new one says it.
            Err(e) if e.status == Some(404) => {
                ctx.log(format!("{e}: the job's comment is gone; posting it again"))
                    .await;
                ctx.record_pending_again(KEY).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let marker = texts::marker(ctx.job);
    let (output, earlier) = once::create_or_find(
        ctx,
        "comment",
        KEY,
        || find(ctx, client, number, &marker),
        || async {
            client
                .post(
                    "posting the job's comment",
                    &format!("/repos/{repo}/issues/{number}/comments"),
                    &json!({ "body": body }),
                )
                .await
                .map(|v| Found::from_json(&v))
        },
    )
    .await?;
    // Found where an earlier attempt posted it: it says what that attempt said; now it says this.
    if earlier && let Some(id) = output.github_id {
        ctx.fence().await?;
        client
            .patch(
                "editing the job's comment",
                &format!("/repos/{repo}/issues/comments/{id}"),
                &json!({ "body": body }),
            )
            .await?;
    }
    Ok(output)
}

/// The job's comment on issue `number`, if an earlier attempt posted it: written by nightshift's own
/// account, ending with the job's marker. Anyone can paste the marker (it is hidden, and job numbers count
/// up), and a stranger's comment taken for the job's would silence its answer; when nightshift does not
/// know its account, nothing is trusted. The marker must end the comment (it is the footer's last line):
/// another job's agent could quote it in its own message.
pub async fn find(
    ctx: &SinkContext<'_>,
    client: &crate::github::RepoClient,
    number: u64,
    marker: &str,
) -> Result<Option<Found>> {
    let Some(own) = ctx.own_login else {
        return Ok(None);
    };
    let comments = client
        .get_all(
            "listing the issue's comments",
            &format!("/repos/{}/issues/{number}/comments", ctx.spec.repo),
            10_000,
        )
        .await?;
    Ok(comments
        .iter()
        .find(|c| {
            c["user"]["login"]
                .as_str()
                .is_some_and(|l| l.eq_ignore_ascii_case(own))
                && c["body"]
                    .as_str()
                    .is_some_and(|b| b.trim_end().ends_with(marker))
        })
        .map(Found::from_json))
}
