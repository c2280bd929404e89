//! Delivery: a stored [`Outcome`] posted to GitHub. Run again after a crash, a restart or a transient
//! failure, it finds what it already posted ([`super::once`]) and posts only the rest.

use anyhow::Result;

use super::check_run::{self, Completion};
use super::outcome::{Outcome, Proposal};
use super::{SinkContext, comment, github_object, policy, pull_request, shape, texts};
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
            if let Err(rule) = check_policy(ctx, proposal).await? {
                let public = texts::refused_by_policy(&rule.to_string());
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
                finish_check(ctx, None, "cancelled", reason, Vec::new()).await?;
            }
            Ok(Ending::Cancelled(reason.clone()))
        }
    }
}

/// The output policy (`limits:`) over what the agent proposes, before anything of it is posted: the texts
/// each output would carry, its labels, its inline comments, and for a pull request the commit (paths, size,
/// added lines). The inner Err is the rule broken.
async fn check_policy(
    ctx: &SinkContext<'_>,
    proposal: &Proposal,
) -> Result<Result<(), policy::Violation>> {
    let spec = ctx.spec;
    let limits = policy::in_force(spec, ctx.limits);
    // The texts as they would be posted (an agent's message is cut to fit GitHub, with a note).
    let mut bodies: Vec<(String, String)> = vec![(
        "the agent's message".into(),
        texts::fit(&proposal.message).into_owned(),
    )];
    let mut inline_comments = 0;
    let mut labels: Vec<&str> = Vec::new();
    let mut changes = None;
    match spec.output {
        OutputKind::Review | OutputKind::CheckRun => {
            if let Some(review) = &proposal.review {
                bodies.push(("the review's summary".into(), review.summary.clone()));
                for c in &review.comments {
                    bodies.push((
                        format!("the inline comment on {}:{}", c.path, c.line),
                        c.body.clone(),
                    ));
                }
                inline_comments = review.comments.len();
            }
        }
        OutputKind::Issue => {
            labels = spec.labels.iter().map(String::as_str).collect();
            if let Some(title) = &spec.output_title {
                bodies.push(("the issue's title".into(), title.clone()));
            }
        }
        OutputKind::PullRequest => {
            if let Some(body) = &spec.output_body {
                bodies.push(("the pull request's body".into(), body.clone()));
            }
            if let Some(commit) = &proposal.commit {
                changes = Some(
                    ctx.workspaces
                        .measure_commit(
                            &spec.repo,
                            commit,
                            limits.max_files.unwrap_or(policy::DEFAULT_MAX_FILES),
                            limits.max_lines.unwrap_or(policy::DEFAULT_MAX_LINES),
                        )
                        .await?,
                );
            }
        }
        OutputKind::Comment => {}
    }
    Ok(policy::check(
        &limits,
        &policy::Proposal {
            bodies: bodies
                .iter()
                .map(|(w, t)| (w.as_str(), t.as_str()))
                .collect(),
            inline_comments,
            labels,
            changes: changes.as_ref(),
        },
    ))
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
            let out = comment::say(ctx, &body).await?;
            ctx.log(format!(
                "delivered comment: {}",
                out.url.as_deref().unwrap_or("(dry run)")
            ))
            .await;
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
            let conclusion = shape::check_conclusion(true, proposal.review.as_ref());
            let annotations = proposal
                .review
                .as_ref()
                .map(shape::annotations)
                .unwrap_or_default();
            finish_check(
                ctx,
                Some(&proposal.head),
                conclusion,
                &proposal.message,
                annotations,
            )
            .await?
            .map(|out| ("reported a check run", out))
        }
    };
    if let Some((_, out)) = &delivered {
        ctx.log(format!(
            "delivered {}: {}",
            out.kind,
            out.url.as_deref().unwrap_or("(dry run)")
        ))
        .await;
    }
    if let Some((what, out)) = delivered
        && has_comment(ctx).await?
    {
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
            finish_check(
                ctx,
                ctx.spec.head_sha.as_deref(),
                "failure",
                &format!("This job failed: {public}."),
                Vec::new(),
            )
            .await?;
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
    head: Option<&str>,
    conclusion: &'static str,
    message: &str,
    annotations: Vec<serde_json::Value>,
) -> Result<Option<Output>> {
    check_run::finish(
        ctx,
        head,
        Completion {
            conclusion,
            title: texts::check_title(conclusion),
            summary: texts::check_summary(message),
            annotations,
        },
    )
    .await
}
