//! The comment sink: the agent's final message as a comment on the issue or pull request.

use anyhow::{Context, Result};

use super::{SinkContext, texts};
use crate::github::with_retry;
use crate::store::Output;

const KEY: &str = "comment";

/// Posts the agent's message as the job's comment.
pub async fn deliver(ctx: &SinkContext<'_>, message: &str, truncated: bool) -> Result<Output> {
    let body = texts::agent_comment(&ctx.spec.trigger, ctx.job, message, truncated);
    post(ctx, &body).await
}

/// Posts `body` as the job's one comment, unless a previous attempt already did.
pub async fn post(ctx: &SinkContext<'_>, body: &str) -> Result<Output> {
    let body = &texts::scrub(body);
    if let Some(done) = ctx.store.find_output(ctx.job, KEY).await? {
        return Ok(done);
    }
    let number = ctx.spec.number.context(
        "this event is not about an issue or pull request, so there is nothing to comment on",
    )?;
    let repo = &ctx.spec.repo;
    let Some(client) = ctx.client else {
        tracing::info!(%repo, number, "dry run: comment not posted\n{body}");
        let mut lines = vec![format!(
            "dry run (no GitHub credentials): would comment on {repo}#{number}:"
        )];
        lines.extend(body.lines().map(str::to_owned));
        return ctx.dry_run("comment", KEY, lines).await;
    };
    let api = client.api();
    let issues = api.issues(repo.owner(), repo.name());
    // A previous attempt may have posted and died before recording it: look for our marker first, in
    // comments by nightshift's own account only. Anyone can paste the marker (it is hidden, and job numbers
    // count up), and a stranger's comment taken for the job's would silence its answer. When nightshift
    // does not know its account, it posts again rather than trust a marker. The marker must end the comment
    // (it is the footer's last line): another job's agent could quote it in its own message.
    let mut existing = None;
    if ctx.attempt > 1
        && let Some(own) = ctx.own_login
    {
        let marker = texts::marker(ctx.job);
        let mut page = with_retry("listing the issue's comments", || {
            issues.list_comments(number).per_page(100).send()
        })
        .await?;
        loop {
            if let Some(c) = page.items.iter().find(|c| {
                c.user.login.eq_ignore_ascii_case(own)
                    && c.body
                        .as_deref()
                        .is_some_and(|b| b.trim_end().ends_with(&marker))
            }) {
                existing = Some(c.html_url.to_string());
                break;
            }
            let next =
                with_retry("listing the issue's comments", || api.get_page(&page.next)).await?;
            match next {
                Some(next) => page = next,
                None => break,
            }
        }
    }
    let url = match existing {
        Some(url) => url,
        None => with_retry("posting the comment", || {
            issues.create_comment(number, body)
        })
        .await?
        .html_url
        .to_string(),
    };
    ctx.record("comment", KEY, Some(url)).await
}
