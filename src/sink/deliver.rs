//! Delivery: a stored [`Outcome`] posted to GitHub. Run again after a crash, a restart or a transient
//! failure, it finds what it already posted ([`super::once`]) and posts only the rest.

use anyhow::Result;

use super::check_run::{self, Completion};
use super::outcome::{Outcome, Proposal};
use super::{SinkContext, comment, github_object, pull_request, texts};
use crate::store::Output;
use crate::trigger::OutputKind;

/// How the job ends once its outcome is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    Failed(String),
    Cancelled(String),
}

/// Posts `outcome`. `report_failures`: whether a failed job with no comment yet says so in a new one.
pub async fn deliver(
    ctx: &SinkContext<'_>,
    outcome: &Outcome,
    report_failures: bool,
) -> Result<Ending> {
    match outcome {
        Outcome::Done(proposal) => {
            if let Err(rule) = check_policy(ctx, proposal) {
                let public = texts::refused_by_policy(&rule);
                ctx.log(format!("not posted: {public}")).await;
                return fail(ctx, &public, Some(&public), report_failures).await;
            }
            done(ctx, proposal).await?;
            Ok(Ending::Succeeded)
        }
        Outcome::Failed { error, public } => {
            fail(ctx, error, public.as_deref(), report_failures).await
        }
        Outcome::Cancelled { reason } => {
            if has_comment(ctx).await? {
                comment::say(
                    ctx,
                    &texts::cancelled_comment(&ctx.spec.trigger, ctx.job, reason),
                )
                .await?;
            }
            if ctx.spec.output == OutputKind::CheckRun
                && ctx
                    .store
                    .find_output(ctx.job, check_run::KEY)
                    .await?
                    .is_some()
            {
                finish_check(ctx, "cancelled", reason, Vec::new()).await?;
            }
            Ok(Ending::Cancelled(reason.clone()))
        }
    }
}

/// The output policy (`limits:`) over what the agent proposes: Err with the rule broken.
fn check_policy(_ctx: &SinkContext<'_>, _proposal: &Proposal) -> Result<(), String> {
    Ok(())
}

async fn done(ctx: &SinkContext<'_>, proposal: &Proposal) -> Result<()> {
    let spec = ctx.spec;
    let delivered: Option<(&str, Output)> = match spec.output {
        OutputKind::Comment => {
            let body = texts::agent_comment(
                &spec.trigger,
                ctx.job,
                &proposal.message,
                proposal.truncated,
            );
            comment::say(ctx, &body).await?;
            None
        }
        OutputKind::PullRequest => {
            let out = pull_request::deliver(ctx, proposal).await?;
            // No changes: the job's comment already says so.
            (out.key == pull_request::KEY).then_some(("opened a pull request", out))
        }
        OutputKind::Review => Some((
            "reviewed the pull request",
            github_object::review(ctx, proposal).await?,
        )),
        OutputKind::Issue => Some(("filed an issue", github_object::issue(ctx, proposal).await?)),
        OutputKind::CheckRun => {
            let conclusion = conclusion(true, proposal);
            let annotations = annotations(proposal);
            let out = finish_check(ctx, conclusion, &proposal.message, annotations).await?;
            Some(("reported a check run", out))
        }
    };
    if let Some((what, out)) = delivered
        && has_comment(ctx).await?
    {
        ctx.log(format!(
            "delivered {}: {}",
            out.kind,
            out.url.as_deref().unwrap_or("(dry run)")
        ))
        .await;
        comment::say(
            ctx,
            &texts::progress_delivered(&spec.trigger, ctx.job, what, out.url.as_deref()),
        )
        .await?;
    }
    Ok(())
}

/// A failed job: its comment (the progress comment, or a new one when failures are reported) says why;
/// its check run concludes `failure`.
async fn fail(
    ctx: &SinkContext<'_>,
    error: &str,
    public: Option<&str>,
    report_failures: bool,
) -> Result<Ending> {
    if let Some(public) = public {
        if ctx.spec.number.is_some() && (report_failures || has_comment(ctx).await?) {
            comment::say(
                ctx,
                &texts::failure_comment(&ctx.spec.trigger, ctx.job, public),
            )
            .await?;
        }
        if ctx.spec.output == OutputKind::CheckRun {
            let head = ctx.spec.head_sha.clone();
            if head.is_some()
                || ctx
                    .store
                    .find_output(ctx.job, check_run::KEY)
                    .await?
                    .is_some()
            {
                finish_check(
                    ctx,
                    "failure",
                    &format!("This job failed: {public}."),
                    Vec::new(),
                )
                .await?;
            }
        }
    } else if ctx.spec.number.is_some() && has_comment(ctx).await? {
        // An operator's problem: the progress comment must not be left saying it is working.
        comment::say(
            ctx,
            &texts::failure_comment(&ctx.spec.trigger, ctx.job, "nightshift could not run it"),
        )
        .await?;
    }
    Ok(Ending::Failed(error.to_owned()))
}

/// Whether the job has a comment on its issue or pull request (its progress comment).
async fn has_comment(ctx: &SinkContext<'_>) -> Result<bool> {
    Ok(ctx.spec.number.is_some()
        && ctx
            .store
            .find_output(ctx.job, comment::KEY)
            .await?
            .is_some())
}

async fn finish_check(
    ctx: &SinkContext<'_>,
    conclusion: &'static str,
    message: &str,
    annotations: Vec<serde_json::Value>,
) -> Result<Output> {
    let recorded = ctx.store.find_output(ctx.job, check_run::KEY).await?;
    let head = recorded
        .as_ref()
        .and(None)
        .or_else(|| ctx.spec.head_sha.clone())
        .unwrap_or_default();
    check_run::finish(
        ctx,
        &head,
        Completion {
            conclusion,
            title: texts::check_title(conclusion),
            summary: texts::check_summary(message),
            annotations,
        },
    )
    .await
}

/// The check run's conclusion: `failure` when the job failed or the agent says so, `success` only when the
/// agent says so, `neutral` otherwise.
fn conclusion(job_succeeded: bool, _proposal: &Proposal) -> &'static str {
    if job_succeeded { "neutral" } else { "failure" }
}

fn annotations(_proposal: &Proposal) -> Vec<serde_json::Value> {
    Vec::new()
}
