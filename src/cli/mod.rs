//! The commands for people on call: `jobs` (the latest jobs, filtered; one job; `--follow`), `jobs cancel`
//! and `jobs retry`, `deliveries` (what came and why each trigger fired or not), and `prune`. They work on
//! the store the service runs on (SQLite or Postgres), and never create one: run where there is none, they
//! say so.

pub mod text;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use nightshift::config::Config;
use nightshift::ids::JobId;
use nightshift::store::{
    Cancel, DeliveryFilter, DeliveryRecord, JobFilter, JobRecord, JobState, Retry, Store,
};

use text::{Column, cut, safe, table};

/// How often `jobs --follow` looks for new log lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Log lines `jobs --follow` reads at a time.
const FOLLOW_BATCH: u32 = 500;

/// Skipped triggers `deliveries` lists under each delivery (`deliveries ID` shows every one).
const SKIPPED_IN_LIST: usize = 5;

/// The service's store, as the configuration names it; an error naming the path and the key when a SQLite
/// store does not exist (an operator in the wrong folder, or with the wrong `--config`), instead of
/// creating an empty one.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    if let Some(path) = sqlite_file(&config.store)
        && !path.exists()
    {
        anyhow::bail!(
            "there is no store at {}: the service has not run with this configuration here. The store is \
             the `store:` key of the service config (or NIGHTSHIFT_STORE); run this where the service runs, \
             or name its config with --config",
            path.display()
        );
    }
    nightshift::store::open(&config.store).await
}

/// The file a `sqlite:` store URL names (none for an in-memory one).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(':')).then(|| path.into())
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// `nightshift jobs [--state S] [--repo R] [--trigger T] [--limit N]`: the newest jobs `filter` selects, as
/// an aligned table (newest at the bottom) or JSON.
pub async fn list_jobs(config: &Config, filter: JobFilter, json: bool) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let mut jobs = store.filtered_jobs(&filter).await?;
    jobs.reverse();
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", jobs_table(&jobs));
    if jobs.is_empty() {
        eprintln!("no jobs{}", if filtered(&filter) { " match" } else { "" });
    }
    Ok(ExitCode::SUCCESS)
}

fn filtered(filter: &JobFilter) -> bool {
    filter.state.is_some() || filter.repo.is_some() || filter.trigger.is_some()
}

/// The jobs table (every value made safe and cut to its column).
pub fn jobs_table(jobs: &[JobRecord]) -> String {
    const COLUMNS: [Column; 7] = [
        Column::right("ID", 10),
        Column::left("STATE", 10),
        Column::left("TRIGGER", 28),
        Column::left("REPOSITORY", 32),
        Column::left("QUEUED (UTC)", 19),
        Column::right("TOOK", 9),
        Column::left("SPENT / ERROR", 60),
    ];
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let took = job
                .started_at
                .zip(job.finished_at)
                .map(|(s, f)| format!("{:.1}s", (f - s) as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            let spent = match (&job.usage, &job.error, &job.waiting) {
                (_, _, Some(why)) => format!("waiting: {}", first_line(why)),
                (_, Some(error), None) => first_line(error).to_owned(),
                (Some(usage), None, None) => usage.to_string(),
                (None, None, None) => String::new(),
            };
            let state = if job.waiting.is_some() {
                "waiting"
            } else {
                job.state.as_str()
            };
            vec![
                job.id.to_string(),
                state.to_owned(),
                job.trigger.clone(),
                job.repo.clone(),
                utc(job.created_at),
                took,
                spent,
            ]
        })
        .collect();
    table(&COLUMNS, &rows)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// `nightshift jobs ID`: one job with its log.
pub async fn show_job(config: &Config, id: i64, json: bool) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let id = JobId(id);
    let Some(job) = store.job(id).await? else {
        eprintln!("there is no job {id}");
        return Ok(ExitCode::from(1));
    };
    let log = store.job_log(id).await?;
    if json {
        let mut value = serde_json::to_value(&job)?;
        value["log"] = log
            .iter()
            .map(|l| serde_json::json!({"stream": l.stream, "line": l.line}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {} — {} ({} attempt(s))",
        job.id,
        job.state.as_str(),
        job.attempts
    );
    println!("trigger:  {}", safe(&job.trigger, false));
    println!("repo:     {}", safe(&job.repo, false));
    println!("delivery: {}", safe(&job.delivery_id.0, false));
    println!("queued:   {} UTC", utc(job.created_at));
    if let Some(usage) = &job.usage {
        println!("spent:    {}", safe(&usage.to_string(), false));
    }
    if let Some(why) = &job.waiting {
        let until = job.next_attempt_at.map(utc).unwrap_or_default();
        println!(
            "waiting:  until {until} UTC ({} time(s) so far): {}",
            job.retries,
            safe(why, false)
        );
    }
    if let Some(error) = &job.error {
        println!("error:    {}", safe(error, false));
    }
    println!("log:");
    for line in log {
        println!(
            "  [{}] {}",
            safe(&line.stream, false),
            safe(&line.line, true)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `nightshift jobs --follow ID`: prints the job's log lines as they are written, until it ends; exits 0
/// when it succeeded, 1 when it failed or was cancelled. Polls the store (SQLite or Postgres alike).
pub async fn follow_job(config: &Config, id: i64) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let id = JobId(id);
    let mut after = 0;
    loop {
        // The state first, the lines after: every line of a job seen ended is printed before exiting.
        let Some(job) = store.job(id).await? else {
            eprintln!("there is no job {id}");
            return Ok(ExitCode::from(1));
        };
        loop {
            let lines = store.job_log_after(id, after, FOLLOW_BATCH).await?;
            for (n, line) in &lines {
                println!("[{}] {}", safe(&line.stream, false), safe(&line.line, true));
                after = *n;
            }
            if lines.len() < FOLLOW_BATCH as usize {
                break;
            }
        }
        let error = job.error.as_deref().map(|e| safe(e, false));
        match job.state {
            JobState::Succeeded => {
                eprintln!("job {id} succeeded");
                return Ok(ExitCode::SUCCESS);
            }
            JobState::Failed | JobState::Cancelled => {
                eprintln!(
                    "job {id} {}: {}",
                    job.state.as_str(),
                    error.unwrap_or_default()
                );
                return Ok(ExitCode::from(1));
            }
            JobState::Queued | JobState::Running | JobState::Delivering => {}
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// `nightshift jobs cancel ID`, on the store the service uses: the service sees it there (a running job's
/// worker is told to stop at its next lease renewal).
pub async fn cancel_job(config: &Config, id: i64) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let id = JobId(id);
    match store
        .cancel_job(id, "cancelled by an operator (`nightshift jobs cancel`)")
        .await?
    {
        Cancel::Cancelled => println!("job {id} cancelled"),
        Cancel::Requested => {
            println!(
                "job {id}: asked to stop; the service stops its agent and reports it cancelled"
            )
        }
        Cancel::NoSuchJob => {
            eprintln!("there is no job {id}");
            return Ok(ExitCode::from(1));
        }
        Cancel::Refused(state) => {
            let why = match state {
                JobState::Delivering => "its agent is done and its result is being posted",
                JobState::Queued | JobState::Running => "it has not ended",
                JobState::Succeeded | JobState::Failed | JobState::Cancelled => "it has ended",
            };
            eprintln!(
                "job {id} is {}: {why}, so it cannot be cancelled",
                state.as_str()
            );
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `nightshift jobs retry ID`: a new job with the same frozen spec; prints its id.
pub async fn retry_job(config: &Config, id: i64) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let id = JobId(id);
    let refused = match store.retry_job(id).await? {
        Retry::Queued(new) => {
            eprintln!("job {new} queued: a retry of job {id}, with the same job spec");
            println!("{new}");
            return Ok(ExitCode::SUCCESS);
        }
        Retry::NoSuchJob => format!("there is no job {id}"),
        Retry::Refused(state) => format!(
            "job {id} is {}: only a failed or cancelled job can be retried",
            state.as_str()
        ),
        Retry::NoSpec => format!(
            "job {id} could not even be prepared (see its error): there is no job spec to run again"
        ),
        Retry::PayloadPruned => format!(
            "job {id}'s event payload was removed by retention (prune.payloads): it cannot run again"
        ),
    };
    eprintln!("{refused}");
    Ok(ExitCode::from(1))
}

/// `nightshift prune [--dry-run]`.
pub async fn prune(config: &Config, dry_run: bool) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let workspaces =
        nightshift::repo::workspace::Workspaces::new(&config.data_dir, config.git.clone());
    let pruned = nightshift::queue::retention::prune(&*store, config, &workspaces, dry_run).await?;
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} finished job(s) with their logs and outputs, {} log line(s) of kept jobs, \
         {} delivery record(s), and the payloads of {} more",
        pruned.jobs.len(),
        pruned.log_lines,
        pruned.deliveries,
        pruned.payloads
    );
    Ok(ExitCode::SUCCESS)
}

/// `--event issues` or `--event issues.opened`: the event, and the action when one is given.
pub fn event_filter(event: Option<String>) -> (Option<String>, Option<String>) {
    match event {
        Some(e) => match e.split_once('.') {
            Some((event, action)) => (Some(event.to_owned()), Some(action.to_owned())),
            None => (Some(e), None),
        },
        None => (None, None),
    }
}

/// `nightshift deliveries [--repo R] [--event E[.ACTION]] [--limit N]`: the newest deliveries (newest at
/// the bottom), each with the jobs it fired and, for the triggers that did not fire, the filter that
/// stopped each.
pub async fn list_deliveries(
    config: &Config,
    filter: DeliveryFilter,
    json: bool,
) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let mut deliveries = store.recent_deliveries(&filter).await?;
    deliveries.reverse();
    if json {
        println!("{}", serde_json::to_string_pretty(&deliveries)?);
        return Ok(ExitCode::SUCCESS);
    }
    const COLUMNS: [Column; 6] = [
        Column::left("RECEIVED (UTC)", 19),
        Column::left("EVENT", 36),
        Column::left("REPOSITORY", 32),
        Column::left("DELIVERY", 38),
        Column::left("STATE", 10),
        Column::left("FIRED", 60),
    ];
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|d| {
            vec![
                utc(d.received_at),
                d.event_name(),
                d.repo.clone().unwrap_or_else(|| "-".into()),
                d.delivery_id.0.clone(),
                d.state().to_owned(),
                fired(d),
            ]
        })
        .collect();
    let rendered = table(&COLUMNS, &rows);
    let mut lines = rendered.lines();
    if !deliveries.is_empty() {
        println!("{}", lines.next().unwrap_or_default());
    }
    // Each delivery's row, then the triggers that did not fire under it.
    for (d, line) in deliveries.iter().zip(lines) {
        println!("{line}");
        let Some(v) = &d.verdicts else { continue };
        for s in v.skipped.iter().take(SKIPPED_IN_LIST) {
            println!(
                "    not fired: {}: {}",
                cut(&s.trigger, 40),
                cut(&s.reason, 100)
            );
        }
        let more = v.skipped.len().saturating_sub(SKIPPED_IN_LIST) + v.omitted as usize;
        if more > 0 {
            println!(
                "    … and {more} more not fired (nightshift deliveries {})",
                cut(&d.delivery_id.0, 38)
            );
        }
        if let Some(note) = &v.note {
            println!("    {}", cut(note, 120));
        }
    }
    if deliveries.is_empty() {
        eprintln!("no deliveries");
    }
    Ok(ExitCode::SUCCESS)
}

/// The jobs a delivery fired: `trigger #ID`, comma-separated; `-` for none.
fn fired(d: &DeliveryRecord) -> String {
    if d.jobs.is_empty() {
        return if d.matched_at.is_some() {
            "nothing".into()
        } else {
            "-".into()
        };
    }
    d.jobs
        .iter()
        .map(|j| format!("{} #{}", j.trigger, j.id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `nightshift deliveries ID`: one delivery (by its X-GitHub-Delivery id), every trigger's verdict in full.
pub async fn show_delivery(config: &Config, id: &str, json: bool) -> Result<ExitCode> {
    let store = open_store(config).await?;
    let Some(d) = store.delivery_record(id).await? else {
        eprintln!("there is no delivery {}", safe(id, false));
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("delivery {}", safe(&d.delivery_id.0, false));
    println!("event:    {}", safe(&d.event_name(), false));
    println!(
        "repo:     {}",
        safe(d.repo.as_deref().unwrap_or("(none)"), false)
    );
    println!("received: {} UTC", utc(d.received_at));
    match d.matched_at {
        Some(at) => println!("matched:  {} UTC", utc(at)),
        None => println!("matched:  not yet (it waits for the dispatcher)"),
    }
    for job in &d.jobs {
        print!(
            "fired:    {} → job {} ({})",
            safe(&job.trigger, false),
            job.id,
            job.state.as_str()
        );
        match &job.error {
            Some(error) => println!(": {}", safe(error, false)),
            None => println!(),
        }
    }
    match &d.verdicts {
        Some(v) => {
            for s in &v.skipped {
                println!(
                    "not fired: {}: {}",
                    safe(&s.trigger, false),
                    safe(&s.reason, false)
                );
            }
            if v.omitted > 0 {
                println!(
                    "not fired: {} more trigger(s), not recorded by name",
                    v.omitted
                );
            }
            if v.others > 0 {
                println!(
                    "{} other trigger(s) do not listen to `{}` events in this repository",
                    v.others,
                    safe(&d.event, false)
                );
            }
            if let Some(note) = &v.note {
                println!("note:     {}", safe(note, false));
            }
        }
        None if d.matched_at.is_some() => println!(
            "(why other triggers did not fire is not recorded for this delivery: it was matched by an \
             older nightshift, or it is a retry's copy of its event)"
        ),
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// A `--state` value.
pub fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s)
        .map_err(|_| "one of queued, running, delivering, succeeded, failed, cancelled".to_owned())
}
