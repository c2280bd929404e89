//! Workers: claim a job with a lease, keep the lease alive while it runs, run it (worktree → agent → sink),
//! and record how it ended. A worker that dies leaves its lease to expire; another worker (after a restart,
//! or on another replica) then runs the job again, and the idempotent sinks deliver its result once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tracing::{Instrument, error, info, info_span, warn};

use super::{JobSpec, Pipeline};
use crate::agent::git::GitAuth;
use crate::agent::prompt::{self, RepoContext};
use crate::agent::workspace::Checkout;
use crate::agent::{self, AgentJob, result};
use crate::ids::JobId;
use crate::sink::texts::Failure;
use crate::sink::{self, SinkContext};
use crate::skill;
use crate::store::{ClaimedJob, Ending, Lease, LogStream};
use crate::trigger::OutputKind;

pub async fn run(pipeline: Arc<Pipeline>, name: String) {
    // Expired leases are found by this sweep; new jobs wake the worker at once.
    let sweep = pipeline
        .config
        .job_lease
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(200));
    loop {
        let notified = pipeline.jobs_waiting.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let claimed = pipeline
            .store
            .claim_job(
                &name,
                pipeline.config.job_lease,
                pipeline.config.max_attempts,
            )
            .await;
        match claimed {
            Ok(Some(job)) => {
                let span = info_span!("job", id = %job.id, trigger = %job.trigger, repo = %job.repo, delivery = %job.delivery_id, attempt = job.attempt);
                run_leased(&pipeline, &name, job).instrument(span).await;
            }
            Ok(None) => {
                let _ = tokio::time::timeout(sweep, notified).await;
            }
            Err(e) => {
                warn!(worker = %name, "claiming a job failed: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs one job while a heartbeat renews its lease; stops the job if the lease is lost or a newer job of
/// its concurrency group asks it to stop.
async fn run_leased(pipeline: &Arc<Pipeline>, owner: &str, job: ClaimedJob) {
    let id = job.id;
    let spec = match serde_json::from_str::<JobSpec>(&job.spec) {
        Ok(spec) => spec,
        Err(e) => {
            let e = anyhow!(e).context("the stored job spec does not parse");
            return end(pipeline, owner, &job, None, Err(e)).await;
        }
    };
    let lease = pipeline.config.job_lease;
    let heartbeat = async {
        loop {
            tokio::time::sleep(lease / 3).await;
            match pipeline.store.renew_lease(id, owner, lease).await {
                Ok(Lease::Held) => {}
                Ok(other) => return other,
                Err(e) => warn!("renewing the lease failed: {e:#}"),
            }
        }
    };
    let result = tokio::select! {
        result = run_job(pipeline, &job, spec.clone()) => result,
        stop = heartbeat => {
            // The job's future is dropped here, which kills the agent's process group.
            if let Err(e) = pipeline.workspaces.discard(&spec.repo, id).await {
                warn!("removing the stopped job's worktree failed: {e:#}");
            }
            if stop == Lease::CancelRequested {
                info!("cancelled: a newer job of its concurrency group replaces it");
                let reason = "cancelled: a newer job of its concurrency group replaced it";
                let _ = pipeline.store.append_log(id, LogStream::Nightshift, &[reason.to_owned()]).await;
                if let Err(e) = pipeline.store.finish_job(id, owner, Ending::Cancelled(reason)).await {
                    error!("recording the cancellation failed: {e:#}");
                }
            } else {
                warn!("lost the lease on the job; another worker has it now");
            }
            return;
        }
    };
    end(pipeline, owner, &job, Some(&spec), result).await;
}

/// Records how the job ended and, when it failed, says so where it came from.
async fn end(
    pipeline: &Pipeline,
    owner: &str,
    job: &ClaimedJob,
    spec: Option<&JobSpec>,
    result: Result<()>,
) {
    let id = job.id;
    // What a user is told (None: an operator's problem, not posted); the whole error is for the log.
    let public = result.as_ref().err().and_then(Failure::public);
    // Known secrets are redacted from the service's log too (the store redacts what it keeps).
    let error = result
        .err()
        .map(|e| crate::redact::redact(&format!("{e:#}")).into_owned());
    let ending = match &error {
        None => {
            info!("job succeeded");
            Ending::Succeeded
        }
        Some(e) => {
            error!("job failed: {e}");
            if public.is_none() {
                error!(
                    "job {id} failed because of nightshift's configuration; this is not said on GitHub: {e}"
                );
            }
            let _ = pipeline
                .store
                .append_log(id, LogStream::Nightshift, &[format!("failed: {e}")])
                .await;
            Ending::Failed(e)
        }
    };
    match pipeline.store.finish_job(id, owner, ending).await {
        Ok(true) => {
            if let (Some(reason), Some(spec)) = (&public, spec)
                && pipeline.config.report_failures
                && let Err(e) = report_failure(pipeline, job, spec, reason).await
            {
                warn!("saying on GitHub that the job failed did not work: {e:#}");
            }
        }
        Ok(false) => warn!("the job was no longer ours when it ended; its end is not recorded"),
        Err(e) => error!("recording the end of the job failed: {e:#}"),
    }
}

/// Tells the issue or pull request the job was about that it failed, and why (a job about neither, a push
/// or a schedule, has only its log).
async fn report_failure(
    pipeline: &Pipeline,
    job: &ClaimedJob,
    spec: &JobSpec,
    reason: &str,
) -> Result<()> {
    if spec.number.is_none() {
        return Ok(());
    }
    let client = pipeline
        .github
        .job_client(
            spec.installation,
            &spec.repo,
            crate::sink::permissions(crate::trigger::OutputKind::Comment),
        )
        .await?
        .map(|(client, _)| client);
    let ctx = SinkContext {
        job: job.id,
        attempt: job.attempt,
        spec,
        store: &pipeline.store,
        client: client.as_ref(),
        own_login: pipeline.config.github.bot_login.as_deref(),
    };
    // `reason` says what failed in a user's words; the details are in the job log.
    let body = crate::sink::texts::failure_comment(&spec.trigger, job.id, reason);
    let output = sink::comment::post(&ctx, &body).await?;
    note(
        pipeline,
        job.id,
        format!(
            "said it failed: {}",
            output.url.as_deref().unwrap_or("(dry run)")
        ),
    )
    .await;
    Ok(())
}

async fn note(pipeline: &Pipeline, job: JobId, line: String) {
    info!("{line}");
    if let Err(e) = pipeline
        .store
        .append_log(job, LogStream::Nightshift, &[line])
        .await
    {
        warn!("writing the job log failed: {e:#}");
    }
}

async fn run_job(pipeline: &Arc<Pipeline>, job: &ClaimedJob, spec: JobSpec) -> Result<()> {
    let profile = pipeline
        .config
        .agents
        .get(&spec.agent)
        .with_context(|| {
            format!(
                "agent profile `{}` is not in the service config",
                spec.agent
            )
        })
        .context(Failure::Config)?;

    // A token for this job: its one repository, the permissions its output needs (App auth).
    let (client, access) = match pipeline
        .github
        .job_client(
            spec.installation,
            &spec.repo,
            crate::sink::permissions(spec.output),
        )
        .await
        .context(Failure::Prepare)?
    {
        Some((client, line)) => (Some(client), Some(line)),
        None => (None, None),
    };
    let auth = client
        .as_ref()
        .map(crate::github::RepoClient::git_auth)
        .unwrap_or_else(GitAuth::none);
    let checkout = match &spec.head_sha {
        Some(sha) => Checkout::Commit(sha),
        None => Checkout::Branch(&spec.default_branch),
    };
    let started = Instant::now();
    let worktree = pipeline
        .workspaces
        .prepare(&spec.repo, &spec.clone_url, checkout, job.id, &auth)
        .await
        .context(Failure::Prepare)?;
    // Said in one write with the agent's start (below): every store write before the agent starts is an
    // fsync on its way.
    let ready = format!(
        "worktree ready at {} ({} ms){}",
        worktree.commit,
        started.elapsed().as_millis(),
        access.map(|a| format!("; {a}")).unwrap_or_default()
    );
    info!("{ready}");

    let mut spec = spec;
    if spec.default_branch.is_empty() {
        spec.default_branch = worktree.default_branch.clone();
    }
    let result = run_in_worktree(
        pipeline,
        job,
        &spec,
        profile,
        &worktree,
        client.as_ref(),
        ready,
    )
    .await;
    if let Err(e) = worktree.remove().await {
        warn!("removing the worktree failed: {e:#}");
    }
    // The job's home, output and copies, whether it succeeded or not (sinks have read what they need).
    let job_dir = job_dir(pipeline, job.id);
    if let Err(e) = tokio::fs::remove_dir_all(&job_dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("removing {} failed: {e}", job_dir.display());
    }
    result
}

/// The job's own folder: its home, temporary and output folders, the repository's context, stashed skills.
fn job_dir(pipeline: &Pipeline, job: JobId) -> std::path::PathBuf {
    pipeline.config.data_dir.join("jobs").join(job.to_string())
}

async fn run_in_worktree(
    pipeline: &Arc<Pipeline>,
    job: &ClaimedJob,
    spec: &JobSpec,
    profile: &crate::config::AgentProfile,
    worktree: &crate::agent::workspace::Worktree,
    client: Option<&crate::github::RepoClient>,
    ready: String,
) -> Result<()> {
    let job_dir = job_dir(pipeline, job.id);
    // A previous attempt that died leaves its folder behind; this attempt starts from nothing, like its
    // worktree.
    match tokio::fs::remove_dir_all(&job_dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e)
                .with_context(|| format!("clearing {}", job_dir.display()))
                .context(Failure::Prepare);
        }
        _ => {}
    }
    // The job's own home (so agents share no state and never see the service's) and its output folder.
    let home = job_dir.join("home");
    let tmp = job_dir.join("tmp");
    let output_dir = job_dir.join("output");
    for dir in [&home, &tmp, &output_dir] {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))
            .context(Failure::Prepare)?;
    }
    let event_path = job_dir.join("event.json");
    tokio::fs::write(
        &event_path,
        pipeline.store.delivery_payload(job.delivery).await?,
    )
    .await
    .context(Failure::Prepare)?;
    let vars = [
        ("NIGHTSHIFT_JOB_ID", job.id.to_string()),
        ("NIGHTSHIFT_REPO", spec.repo.to_string()),
        ("NIGHTSHIFT_EVENT", spec.event.clone()),
        ("NIGHTSHIFT_ACTION", spec.action.clone().unwrap_or_default()),
        ("NIGHTSHIFT_TRIGGER", spec.trigger.clone()),
        ("NIGHTSHIFT_EVENT_PATH", event_path.display().to_string()),
        ("NIGHTSHIFT_OUTPUT_DIR", output_dir.display().to_string()),
        ("HOME", home.display().to_string()),
        ("TMPDIR", tmp.display().to_string()),
    ];

    // The agent's output reaches the job log as it comes, in small batches, within the job's budget
    // (`max_job_log`): what waits for the store never exceeds it, whatever the agent writes.
    let (tx, mut rx) = crate::agent::log::JobLog::new(pipeline.config.max_job_log);
    let store = pipeline.store.clone();
    let job_id = job.id;
    let logger = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            // One write per run of lines from the same stream, in order.
            for run in batch.chunk_by(|a, b| a.0 == b.0) {
                let lines: Vec<String> = run.iter().map(|(_, line)| line.clone()).collect();
                if let Err(e) = store.append_log(job_id, run[0].0, &lines).await {
                    warn!("writing the job log failed: {e:#}");
                }
            }
        }
    });

    // What the repository says about itself (AGENTS.md, skills), from its default branch.
    let context_dir = job_dir.join("repo");
    let exported = pipeline
        .workspaces
        .export_context(&spec.repo, &spec.default_branch, &context_dir)
        .await
        .context("reading the repository's AGENTS.md and skills from its default branch")
        .context(Failure::Prepare)?;
    let origin = format!(
        "from `{}` at {}",
        if spec.default_branch.is_empty() {
            "the default branch"
        } else {
            &spec.default_branch
        },
        &exported.commit[..exported.commit.len().min(12)]
    );
    let repo_context = RepoContext::read(&context_dir, origin, exported.agents_md);

    // Skills: the service's and the repository's, the ones the trigger names, where the agent looks.
    let (available, skill_problems) = skill::available(&pipeline.config.skills, &context_dir);
    let mut lines = vec![ready];
    // Symlinks and submodules of the default branch are never followed: said, not read.
    lines.extend(exported.skipped.iter().map(ToString::to_string));
    lines.extend(
        repo_context
            .refused
            .iter()
            .map(|why| format!("skipped a repository instruction file: {why}")),
    );
    lines.extend(
        skill_problems
            .iter()
            .map(|d| format!("skipped an invalid skill: {d}")),
    );
    let selected = skill::select(&available, &spec.skills, spec.all_skills)
        .map_err(|e| anyhow!(e.clone()).context(Failure::Trigger(e)))?;
    if !repo_context.agents_md.is_empty() {
        let paths: Vec<&str> = repo_context
            .agents_md
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        lines.push(format!(
            "repository instructions {}: {}",
            repo_context.origin,
            paths.join(", ")
        ));
    }
    if !selected.is_empty() {
        let how = if profile.backend.edits_files() {
            "in the worktree"
        } else {
            "in the prompt"
        };
        lines.push(format!("skills {how}: {}", skill::describe(&selected)));
    }
    let staged = if profile.backend.edits_files() {
        let staged = skill::stage(&selected, &worktree.path, &job_dir.join("stash"))
            .context("putting the skills in the worktree")
            .context(Failure::Prepare)?;
        lines.extend(staged.notes.iter().cloned());
        Some(staged)
    } else {
        None
    };
    let prompt = prompt::compose(
        &profile.backend,
        &spec.prompt,
        spec.output,
        &repo_context,
        &selected,
        spec.all_skills,
    );
    let timeout = spec
        .timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(profile.timeout);
    let starting = format!(
        "starting agent `{}` ({}, {})",
        spec.agent,
        profile.backend.kind(),
        match (profile.backend.edits_files(), profile.sandbox) {
            (false, _) => "no program",
            (true, crate::config::SandboxKind::Bubblewrap) => "in its box",
            (true, crate::config::SandboxKind::None) => "WITHOUT a box: sandbox: none",
        }
    );
    info!("{starting}");
    lines.push(starting);
    if let Err(e) = pipeline
        .store
        .append_log(job.id, LogStream::Nightshift, &lines)
        .await
    {
        warn!("writing the job log failed: {e:#}");
    }
    let max_output = spec
        .max_output
        .map_or(profile.max_output, |m| m.min(profile.max_output));
    let started = Instant::now();
    // The agent's box: it writes its worktree, home, temporary and output folders; it reads its job's
    // folder and this repository's mirror (the worktree's git objects); the rest of the data dir, the
    // config, the key and the store are hidden (crate::sandbox).
    let sandbox = (profile.sandbox == crate::config::SandboxKind::Bubblewrap).then(|| {
        let config = &pipeline.config;
        crate::sandbox::BoxSpec {
            worktree: worktree.path.clone(),
            // A fork's pull request is read, not changed, unless its trigger opted in (`forks: allow`).
            read_only_worktree: spec.read_only,
            writable: [home.clone(), tmp.clone(), output_dir.clone()]
                .into_iter()
                .chain(profile.shared.writable.iter().cloned())
                .collect(),
            read_only: [
                job_dir.clone(),
                config
                    .data_dir
                    .join("mirrors")
                    .join(spec.repo.owner())
                    .join(format!("{}.git", spec.repo.name())),
            ]
            .into_iter()
            .chain(profile.shared.read_only.iter().cloned())
            .collect(),
            hidden: crate::sandbox::hidden_paths(
                &config.data_dir,
                (pipeline.env)("HOME").as_deref().map(std::path::Path::new),
                &config.secret_files,
                &config.store,
            ),
            network: crate::sandbox::Network::None,
            limits: profile.limits,
            init: std::env::current_exe().unwrap_or_default(),
        }
    });
    // The job's token for the model gateway; it is revoked when `access` is dropped, however the job ends.
    let access = pipeline
        .gateway
        .open(job.id, &spec.repo.to_string(), &spec.agent, profile)
        .await
        .context(Failure::Config)?;
    // The openai backend runs inside nightshift, never in a box.
    let boxed = sandbox.is_some() && profile.backend.edits_files();
    let model = access.as_ref().map(|a| a.model_access(boxed));
    let outcome = agent::run(AgentJob {
        profile_name: &spec.agent,
        profile,
        worktree: &worktree.path,
        prompt: &prompt,
        home: &home,
        output_dir: &output_dir,
        vars: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        sandbox,
        timeout,
        max_turns: match (profile.max_turns, spec.max_turns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        max_output,
        env: &*pipeline.env,
        log: tx,
        model,
    })
    .await;
    let _ = logger.await;
    // Skills nightshift put there are not the agent's work: gone before the worktree's changes are read.
    if let Some(staged) = staged {
        staged.restore().map_err(|e| {
            let why = e.to_string();
            anyhow!(e)
                .context("putting the worktree's own skill folders back")
                .context(Failure::Result(why))
        })?;
    }
    // The agent could not be started (a missing API key or CLI): the operator's to fix.
    let mut outcome = outcome.context(Failure::Config)?;
    // What a model backend spent is what the gateway metered, whatever the agent says it spent.
    if let Some(access) = &access {
        outcome.usage = Some(access.settle().await);
    }
    // The agent is gone: its token goes too.
    let refusal = access.as_ref().and_then(|a| a.refusal());
    drop(access);
    if let Some(usage) = &outcome.usage
        && let Err(e) = pipeline.store.record_usage(job.id, usage).await
    {
        warn!("recording what the agent spent failed: {e:#}");
    }
    // Off the async threads: the reads never block on a FIFO, but a slow filesystem must not stall them.
    let result = {
        let (dir, message, truncated) = (
            output_dir.clone(),
            outcome.message.clone(),
            outcome.truncated,
        );
        tokio::task::spawn_blocking(move || result::read(&dir, message, truncated, max_output))
            .await
            .context("reading the agent's result")?
    };
    let spent = outcome
        .usage
        .as_ref()
        .map(|u| format!("; spent: {u}"))
        .unwrap_or_default();
    note(
        pipeline,
        job.id,
        format!(
            "agent ended: {} after {} ms{spent}",
            outcome.ended,
            started.elapsed().as_millis()
        ),
    )
    .await;
    if let Some(reason) = refusal {
        let why = format!("budget reached: {reason}");
        return Err(anyhow!(why.clone()).context(Failure::Agent(why)));
    }
    if let Some(failure) = outcome.failure {
        // A timeout or a limit is said as it is; any other failure (an exit status, an endpoint's answer) only
        // as "the agent failed", with the details in the log.
        let public = public_failure(&failure);
        return Err(anyhow!(failure).context(Failure::Agent(public)));
    }
    let result = result.map_err(|e| {
        let why = e.to_string();
        e.context(Failure::Result(why))
    })?;
    if result.truncated {
        note(
            pipeline,
            job.id,
            format!("the agent's message was cut at {max_output} bytes"),
        )
        .await;
    }
    if result.review.is_some() && spec.output != OutputKind::Review {
        note(
            pipeline,
            job.id,
            format!(
                "review.json ignored: the output is `{}`, not `review`",
                spec.output
            ),
        )
        .await;
    }

    // The agent may have run longer than the job's token lives: the sinks get a fresh one.
    if let Some(client) = client
        && let Some(line) = client.refresh().await.context(Failure::Deliver)?
    {
        note(pipeline, job.id, format!("for the delivery: {line}")).await;
    }
    let ctx = SinkContext {
        job: job.id,
        attempt: job.attempt,
        spec,
        store: &pipeline.store,
        client,
        own_login: pipeline.config.github.bot_login.as_deref(),
    };
    let output = match spec.output {
        OutputKind::Comment => {
            sink::comment::deliver(&ctx, &result.message, result.truncated).await
        }
        OutputKind::PullRequest => {
            sink::pull_request::deliver(&ctx, worktree, &result.message).await
        }
        OutputKind::Review | OutputKind::Issue | OutputKind::CheckRun => {
            sink::github_object::deliver(&ctx, worktree, &result).await
        }
    }
    .context(Failure::Deliver)?;
    note(
        pipeline,
        job.id,
        format!(
            "delivered {}: {}",
            output.kind,
            output.url.as_deref().unwrap_or("(dry run)")
        ),
    )
    .await;
    Ok(())
}

/// What of an agent's failure is said on GitHub: a timeout or a profile limit, which nightshift words
/// itself, as it is; anything else (an exit status, an endpoint's or a CLI's error, whose text the model
/// endpoint or the agent may have written) only as "the agent failed". The texts are matched whole, not
/// searched for, so a failure that merely contains the words of a limit is not posted.
fn public_failure(failure: &str) -> String {
    const LIMITS: [&str; 2] = [
        "Claude Code reached the profile's max_turns",
        "Claude Code reached the profile's max_cost_usd",
    ];
    let timed_out = failure
        .strip_prefix("the agent ran out of time after ")
        .is_some_and(|d| humantime::parse_duration(d).is_ok());
    if timed_out || LIMITS.contains(&failure) {
        failure.to_owned()
    } else {
        "the agent failed".to_owned()
    }
}

#[cfg(test)]
mod public_failure_tests {
    use super::public_failure;

    #[test]
    fn only_nightshifts_own_words_for_a_limit_are_posted() {
        for said in [
            "the agent ran out of time after 10m",
            "the agent ran out of time after 1h 30m",
            "Claude Code reached the profile's max_turns",
        ] {
            assert_eq!(public_failure(said), said);
        }
        // Texts a hostile model endpoint or CLI output chooses, dressed up as a limit.
        for hidden in [
            "the model endpoint answered without a message (finish_reason: \"reached the profile's \
             limit; internal gateway at http://10.0.0.5:8080\")",
            "Claude Code failed (success): API Error: 400 reached the profile's budget /srv/nightshift",
            "Codex failed: Claude Code reached the profile's max_turns",
            "the agent ran out of time after 10m; also see /etc/nightshift/nightshift.yml",
        ] {
            assert_eq!(public_failure(hidden), "the agent failed", "{hidden}");
        }
    }
}
