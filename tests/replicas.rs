//! Two `nightshift serve` processes on one Postgres, as two machines would run them (each its own data
//! directory and port): events sent to both alternately run each job exactly once, each output is posted
//! once, and a scheduled trigger fires once per tick.
//!
//! `REPLICA_EVENTS=N` sends another number of events (default 500).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::postgres::PgServer;
use common::{Auth, SECRET, Spine, sign};
use nightshift::store::{JobRecord, JobState, KnownRepo, PostgresStore, Store};
use serde_json::Value;

const TRIAGE: (&str, &str) = (
    "triage.yml",
    "on:\n  issues:\n    types: [opened]\nagent: reply\n\
     prompt: \"Triage: {{ event.issue.title | trusted }}\"\noutput: comment\n",
);

const NIGHTLY: (&str, &str) = (
    "nightly.yml",
    "on:\n  schedule:\n    - cron: '* * * * *'\nrepos: [Codertocat/Hello-World]\nagent: reply\n\
     prompt: \"Audit {{ repo }}\"\noutput:\n  type: issue\n  title: Nightly audit\n",
);

fn finished(job: &JobRecord) -> bool {
    matches!(
        job.state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_run_every_job_once_and_fire_each_tick_once() {
    let events: usize = std::env::var("REPLICA_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let pg = PgServer::start();
    let mut spine = Spine::new(Auth::Token, &[TRIAGE, NIGHTLY]).await;
    let root = spine.dir.path().to_owned();
    let config = std::fs::read_to_string(&spine.config).unwrap();
    let sqlite_line = config
        .lines()
        .find(|l| l.starts_with("store: "))
        .unwrap()
        .to_owned();
    let config = config
        .replace(&sqlite_line, &format!("store: '{}'", pg.url()))
        .replace("workers: 2\n", "workers: 4\nmax_jobs_per_hour: 100000\n");
    let data = format!("data_dir: {}/data\n", root.display());
    assert!(config.contains(&data));
    // Each replica its own data directory (mirrors, worktrees), as on its own machine.
    let configs = [root.join("replica-a.yml"), root.join("replica-b.yml")];
    std::fs::write(
        &configs[0],
        config.replace(&data, &data.replace("/data", "/data-a")),
    )
    .unwrap();
    std::fs::write(
        &configs[1],
        config.replace(&data, &data.replace("/data", "/data-b")),
    )
    .unwrap();

    // The repository as an earlier delivery taught nightshift, and its schedule's last tick ten minutes
    // ago: both replicas find a tick due the moment they start.
    let store = PostgresStore::connect(&pg.url()).await.unwrap();
    store
        .upsert_repository(&KnownRepo {
            full_name: "Codertocat/Hello-World".into(),
            installation_id: None,
            clone_url: spine.remote.display().to_string(),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    store
        .set_last_tick(
            "* * * * *@UTC",
            "Codertocat/Hello-World",
            nightshift::now_ms() - 10 * 60 * 1000,
        )
        .await
        .unwrap();

    let mut servers = Vec::new();
    for config in &configs {
        spine.config = config.clone();
        spine.start().await;
        servers.push(spine.server.take().unwrap());
    }
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();

    // Every event its own issue title (so its comment says which event it answers), sent to the replicas
    // in turn, 16 at a time.
    let started = Instant::now();
    let template: Value = serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    spine.github.learn(&template);
    nightshift::install_tls_provider();
    let client = reqwest::Client::new();
    let mut sending = tokio::task::JoinSet::new();
    for i in 0..events {
        if sending.len() >= 16 {
            sending.join_next().await.unwrap().unwrap();
        }
        let mut payload = template.clone();
        payload["issue"]["title"] = Value::String(format!("event {i} of the replicas test"));
        let body = serde_json::to_vec(&payload).unwrap();
        let request = client
            .post(format!("{}/webhooks/github", urls[i % 2]))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "issues")
            .header("X-GitHub-Delivery", format!("replica-event-{i}"))
            .header("X-Hub-Signature-256", sign(SECRET, &body))
            .body(body);
        sending.spawn(async move {
            let status = request.send().await.unwrap().status();
            assert_eq!(status, 202, "event {i}");
        });
    }
    while let Some(sent) = sending.join_next().await {
        sent.unwrap();
    }
    let sent = started.elapsed();

    // Every event's job, and the schedule's first tick, ran to the end.
    let deadline = Instant::now() + Duration::from_secs(900);
    let jobs = loop {
        let jobs = store.jobs().await.unwrap();
        let triage = jobs.iter().filter(|j| j.trigger == "triage").count();
        let ticks = jobs.iter().filter(|j| j.trigger == "nightly").count();
        if triage == events && ticks >= 1 && jobs.iter().all(finished) {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "{triage} of {events} event jobs, {ticks} tick jobs; unfinished: {:?}",
            jobs.iter()
                .filter(|j| !finished(j))
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ran = started.elapsed();
    for job in &jobs {
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Succeeded, 1),
            "every job ran once: {job:?}"
        );
    }

    // Each event answered exactly once, by its own job.
    let comments = spine.github.comments();
    assert_eq!(comments.len(), events, "one comment per event");
    let mut answered: HashMap<usize, usize> = HashMap::new();
    for comment in &comments {
        let event: usize = comment
            .body
            .split("Triage: event ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a comment of no event: {}", comment.body));
        *answered.entry(event).or_default() += 1;
    }
    assert_eq!(answered.len(), events);
    assert!(
        answered.values().all(|n| *n == 1),
        "no event answered twice"
    );

    // Each tick fired once: one delivery, one job, one issue per tick (the first one at start, found due by
    // both replicas at once; later ones if the test ran past a minute).
    let ticks: Vec<&JobRecord> = jobs.iter().filter(|j| j.trigger == "nightly").collect();
    let mut tick_ids: Vec<&str> = ticks.iter().map(|j| j.delivery_id.0.as_str()).collect();
    tick_ids.sort();
    tick_ids.dedup();
    assert_eq!(tick_ids.len(), ticks.len(), "{tick_ids:?}");
    let issues = spine
        .github
        .created()
        .iter()
        .filter(|c| c.operation == "issues/create")
        .count();
    assert_eq!(issues, ticks.len(), "one issue per tick");
    let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
    let fired: usize = logs
        .iter()
        .map(|log| log.matches("scheduled tick stored").count())
        .sum();
    assert_eq!(fired, ticks.len(), "each tick stored by one replica");

    // Both replicas took part: each ran jobs.
    for (log, name) in logs.iter().zip(["a", "b"]) {
        assert!(log.contains("job succeeded"), "replica {name} ran no job");
    }
    spine.assert_no_unexpected_calls();
    eprintln!(
        "{events} events sent to 2 replicas in {:.1} s; all {} jobs done {:.1} s after the first was sent",
        sent.as_secs_f64(),
        jobs.len(),
        ran.as_secs_f64()
    );
}
