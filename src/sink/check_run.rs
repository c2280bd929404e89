//! The check run of a job with `output: check_run`: `in_progress` when the job starts, `completed` with the
//! real conclusion when it ends (`failure` when the job failed or the agent says so; `neutral` or `success`
//! only when earned), a summary and annotations from the agent's structured review.

use anyhow::Result;
use serde_json::{Value, json};

use super::once::{self, Found};
use super::{SinkContext, texts};
use crate::store::Output;

pub const KEY: &str = "check_run";
/// Recorded before the one update that carries annotations (GitHub appends them on every update, so they
/// are sent at most once).
const ANNOTATED: &str = "check_run_annotations";
/// GitHub takes at most 50 annotations per request.
pub const MAX_ANNOTATIONS: usize = 50;

/// The check run's `external_id`: how nightshift finds the job's check run again.
pub fn external_id(job: crate::ids::JobId) -> String {
    format!("nightshift-job-{job}")
}

fn name(ctx: &SinkContext<'_>) -> String {
    ctx.spec
        .check_name
        .clone()
        .unwrap_or_else(|| ctx.spec.trigger.clone())
}

/// The check run's final state.
pub struct Completion {
    /// `success`, `failure`, `neutral`, `cancelled`, ...
    pub conclusion: &'static str,
    pub title: String,
    pub summary: String,
    pub annotations: Vec<Value>,
}

/// Shows the job's check run as `in_progress` on `head_sha`.
pub async fn start(ctx: &SinkContext<'_>, head_sha: &str) -> Result<Output> {
    let name = name(ctx);
    let mut body = json!({
        "name": name,
        "head_sha": head_sha,
        "status": "in_progress",
        "external_id": external_id(ctx.job),
        "output": { "title": texts::check_title_working(), "summary": texts::check_summary_working(&ctx.spec.trigger, &ctx.spec.agent, ctx.job) },
    });
    if let Some(url) = ctx.job_url() {
        body["details_url"] = json!(url);
    }
    create(ctx, head_sha, body).await
}

/// Completes the job's check run (creating it completed on `head_sha` when it was never started; with no
/// commit to put it on, there is none, and the job log says so).
pub async fn finish(
    ctx: &SinkContext<'_>,
    head_sha: Option<&str>,
    done: Completion,
) -> Result<Option<Output>> {
    let mut annotations = done.annotations;
    annotations.truncate(MAX_ANNOTATIONS);
    let recorded = ctx.store.find_output(ctx.job, KEY).await?;
    let Some(client) = ctx.client else {
        let body = json!({"conclusion": done.conclusion, "title": done.title, "summary": done.summary, "annotations": annotations});
        return ctx
            .dry_run(
                "check_run",
                KEY,
                vec![format!(
                    "dry run (no GitHub credentials): would complete the check run: {body}"
                )],
            )
            .await
            .map(Some);
    };
    if let Some(started) = recorded.filter(|r| !r.pending)
        && let Some(id) = started.github_id
    {
        // Annotations ride on one update only: GitHub appends them on each.
        let annotate =
            !annotations.is_empty() && ctx.store.find_output(ctx.job, ANNOTATED).await?.is_none();
        let mut output = json!({ "title": done.title, "summary": done.summary });
        if annotate {
            output["annotations"] = json!(annotations);
            ctx.store
                .record_output(
                    ctx.job,
                    &Output {
                        kind: "check_run".into(),
                        key: ANNOTATED.into(),
                        url: None,
                        github_id: Some(id),
                        pending: true,
                    },
                )
                .await?;
        }
        ctx.fence().await?;
        let mut body = json!({
            "status": "completed",
            "conclusion": done.conclusion,
            "completed_at": jiff::Timestamp::now().to_string(),
            "output": output,
        });
        texts::scrub_json(&mut body);
        let route = format!("/repos/{}/check-runs/{id}", ctx.spec.repo);
        let answer = if annotate {
            client
                .patch_once("completing the check run", &route, &body)
                .await?
        } else {
            client
                .patch("completing the check run", &route, &body)
                .await?
        };
        let found = Found::from_json(&answer);
        return ctx
            .record("check_run", KEY, found.url.or(started.url), Some(id))
            .await
            .map(Some);
    }
    let Some(head_sha) = head_sha else {
        ctx.log("no check run: the job ended before it had a commit to report on".into())
            .await;
        return Ok(None);
    };
    let body = json!({
        "name": name(ctx),
        "head_sha": head_sha,
        "status": "completed",
        "conclusion": done.conclusion,
        "external_id": external_id(ctx.job),
        "completed_at": jiff::Timestamp::now().to_string(),
        "output": { "title": done.title, "summary": done.summary, "annotations": annotations },
    });
    create(ctx, head_sha, body).await.map(Some)
}

async fn create(ctx: &SinkContext<'_>, head_sha: &str, mut body: Value) -> Result<Output> {
    texts::scrub_json(&mut body);
    let repo = &ctx.spec.repo;
    let Some(client) = ctx.client else {
        return ctx
            .dry_run(
                "check_run",
                KEY,
                vec![format!(
                    "dry run (no GitHub credentials): would create a check run: {body}"
                )],
            )
            .await;
    };
    let external = external_id(ctx.job);
    once::create(
        ctx,
        "check_run",
        KEY,
        || async {
            // The job's check run on the commit, by its external id, created by nightshift's own App (any
            // App installed on the repository can set any external id).
            let runs = client
                .get(
                    "listing the commit's check runs",
                    &format!("/repos/{repo}/commits/{head_sha}/check-runs?per_page=100&filter=all"),
                )
                .await?;
            let Some(own_slug) = ctx.own_login.and_then(|l| l.strip_suffix("[bot]")) else {
                return Ok(None);
            };
            Ok(runs["check_runs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| {
                    r["external_id"].as_str() == Some(external.as_str())
                        && r["app"]["slug"].as_str() == Some(own_slug)
                })
                .map(Found::from_json))
        },
        || async {
            client
                .post(
                    "creating the check run",
                    &format!("/repos/{repo}/check-runs"),
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
