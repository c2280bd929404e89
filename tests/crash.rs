//! The crash test: under a steady stream of signed webhooks, `nightshift serve` is killed with SIGKILL at
//! random moments and started again on the same store, over and over. Afterwards every delivery that was
//! acknowledged is in the store, every job it made succeeded and ran to completion once, and every output
//! exists exactly once on the fake GitHub.
//!
//! `NIGHTSHIFT_CRASH_ROUNDS` sets how many kills (10 by default; `scripts/crash-test.sh` runs 100), and
//! `NIGHTSHIFT_CRASH_SEED` replays a run (the seed is printed at the start).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Auth, FakeGitHub, Spine, append_config, git};
use nightshift::store::{JobRecord, JobState, Store};
use serde_json::Value;

const REPO: &str = "Codertocat/Hello-World";

/// Three event kinds, each firing one trigger: a comment, a pull request (and its comment), a check run.
const REPLY: (&str, &str) = (
    "reply.yml",
    "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: crash\nprompt: reply\n",
);
const FIX: (&str, &str) = (
    "fix.yml",
    "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: crashedit\nprompt: fix it\noutput: pull_request\n",
);
const AUDIT: (&str, &str) = (
    "audit.yml",
    "on:\n  push:\n    branches: [main]\nagent: crash\nprompt: audit\noutput:\n  type: check_run\n  name: crash audit\n",
);

/// The command agent: records each start and each completed run (with the server generation that
/// started it, given on its command line, and a nonce naming the run) in `runs`, and answers with the
/// nonce. `crashedit` also changes the worktree, for a pull request.
const AGENT: &str = r#"#!/bin/sh
set -eu
dir=$1
gen=$2
nonce="$NIGHTSHIFT_JOB_ID.$gen.$(date +%s%N)"
echo "start $NIGHTSHIFT_JOB_ID $gen $nonce" >> "$dir/runs"
cat > /dev/null
if [ "${3:-}" = edit ]; then echo "run $nonce" >> README.md; fi
sleep 0.1
echo "done $NIGHTSHIFT_JOB_ID $gen $nonce" >> "$dir/runs"
echo "run $nonce"
"#;

fn rounds() -> usize {
    std::env::var("NIGHTSHIFT_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}

/// A seeded generator (splitmix64): the same seed draws the same delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reply,
    Fix,
    Audit,
}

struct Sent {
    delivery: String,
    kind: Kind,
    status: Option<u16>,
}

/// What the poster needs from the world: where the server is now (none while it is down).
struct Stream {
    url: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

fn payload(template: &Value, kind: Kind, n: u64, head: &str) -> Vec<u8> {
    let mut v = template.clone();
    match kind {
        Kind::Reply | Kind::Fix => {
            v["issue"]["number"] = n.into();
            v["issue"]["title"] = format!("Crash {n}").into();
        }
        Kind::Audit => {
            v["ref"] = "refs/heads/main".into();
            v["after"] = head.into();
            v["deleted"] = false.into();
        }
    }
    serde_json::to_vec(&v).unwrap()
}

/// Posts signed deliveries one after another, with unique ids, until told to stop; records each answer.
async fn post_continuously(
    stream: Stream,
    github: FakeGitHub,
    templates: [Value; 3],
    head: String,
) {
    nightshift::install_tls_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stream.stop.load(Ordering::SeqCst) {
        let url = stream.url.lock().unwrap().clone();
        let Some(url) = url else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        n += 1;
        let (kind, event, template) = match n % 3 {
            0 => (Kind::Reply, "issues", &templates[0]),
            1 => (Kind::Fix, "issues", &templates[1]),
            _ => (Kind::Audit, "push", &templates[2]),
        };
        let body = payload(template, kind, n, &head);
        github.learn(&serde_json::from_slice(&body).unwrap());
        let delivery = format!("crash-{n}");
        let answer = client
            .post(format!("{url}/webhooks/github"))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", &delivery)
            .header("X-Hub-Signature-256", common::sign(common::SECRET, &body))
            .body(body)
            .send()
            .await;
        let status = answer.ok().map(|a| a.status().as_u16());
        stream.sent.lock().unwrap().push(Sent {
            delivery,
            kind,
            status,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run of the agent, from the `runs` file.
#[derive(Debug)]
struct Run {
    done: bool,
    job: i64,
    generation: u64,
    nonce: String,
}

fn runs(dir: &Path) -> Vec<Run> {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 4, "a torn line in the runs file: {line:?}");
            Run {
                done: f[0] == "done",
                job: f[1].parse().unwrap(),
                generation: f[2].parse().unwrap(),
                nonce: f[3].to_owned(),
            }
        })
        .collect()
}

fn ended(job: &JobRecord) -> bool {
    matches!(
        job.state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Waits (on the store) until every stored delivery is matched and every job has ended.
async fn wait_for_empty_queue(store: &dyn Store, limit: Duration) -> Vec<JobRecord> {
    let start = Instant::now();
    loop {
        let unmatched = store.unmatched_deliveries(10).await.unwrap();
        let jobs = store.jobs().await.unwrap();
        if unmatched.is_empty() && jobs.iter().all(ended) {
            return jobs;
        }
        assert!(
            start.elapsed() < limit,
            "the queue did not empty in {limit:?}: {} unmatched deliveries, jobs not ended: {:#?}",
            unmatched.len(),
            jobs.iter().filter(|j| !ended(j)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn crash_test(store_url: Option<String>) {
    let rounds = rounds();
    let seed = std::env::var("NIGHTSHIFT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {rounds} rounds, NIGHTSHIFT_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    // As a GitHub App, as in production: only an App can create check runs, and only an App's own check runs
    // can be found again after a crash (by external id and the App's slug).
    let mut spine = Spine::new(Auth::App, &[REPLY, FIX, AUDIT]).await;
    let runs_dir: PathBuf = spine.dir.path().join("runs");
    std::fs::create_dir_all(&runs_dir).unwrap();
    let agent = spine.dir.path().join("crash.sh");
    std::fs::write(&agent, AGENT).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    spine.add_agents(&format!(
        "  crash: {{command: [{a}, {d}, \"@GEN@\"], timeout: 60s, shared: {{writable: [{d}]}}}}\n\
         \x20 crashedit: {{command: [{a}, {d}, \"@GEN@\", edit], timeout: 60s, shared: {{writable: [{d}]}}}}\n",
        a = agent.display(),
        d = runs_dir.display()
    ));
    // Four workers; a job interrupted by many kills in a row still gets to run (the attempt budget is not
    // what this test is about).
    let text = std::fs::read_to_string(&spine.config).unwrap();
    let mut text = text.replacen("workers: 2\n", "workers: 4\n", 1);
    let sqlite = format!(
        "sqlite://{}/state/nightshift.db",
        spine.dir.path().display()
    );
    if let Some(url) = &store_url {
        text = text.replacen(
            &format!("store: {sqlite}\n"),
            &format!("store: \"{url}\"\n"),
            1,
        );
    }
    std::fs::write(&spine.config, text).unwrap();
    // Durability, not quotas: the hourly cap counts every start, and kills restart jobs.
    append_config(&spine, "max_attempts: 1000\nmax_jobs_per_hour: 100000\n");
    // Each server tells its agents which one it is: an agent it spawned an instant before it was killed
    // can outlive it, and its run belongs to that server, not the next.
    let config = std::fs::read_to_string(&spine.config).unwrap();
    let store_url = store_url.unwrap_or(sqlite);

    let head = git(&spine.remote, &["rev-parse", "main"]);
    let template = |path: &str| -> Value { serde_json::from_slice(&spine.payload(path)).unwrap() };
    let templates = [
        template("issues/opened.json"),
        template("issues/labeled.json"),
        template("push/with-new-branch.json"),
    ];
    let url = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let poster = tokio::spawn(post_continuously(
        Stream {
            url: url.clone(),
            stop: stop.clone(),
            sent: sent.clone(),
        },
        spine.github.clone(),
        templates,
        head,
    ));

    let began = Instant::now();
    for generation in 0..=rounds as u64 {
        std::fs::write(
            &spine.config,
            config.replace("@GEN@", &generation.to_string()),
        )
        .unwrap();
        spine.start().await;
        *url.lock().unwrap() = Some(spine.url());
        if generation == rounds as u64 {
            break;
        }
        let delay = rng.between(100, 2500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // Down: the poster's next requests are refused until the next server is up.
        spine.kill();
        *url.lock().unwrap() = None;
    }
    let killed = began.elapsed();
    stop.store(true, Ordering::SeqCst);
    poster.await.unwrap();

    // The last server runs until the queue is empty.
    let store = nightshift::store::open(&store_url).await.unwrap();
    let jobs = wait_for_empty_queue(store.as_ref(), Duration::from_secs(240)).await;
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let acked: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status.is_some_and(|c| (200..300).contains(&c)))
        .collect();
    eprintln!(
        "crash test: {rounds} kills in {:.1} s; {} deliveries sent, {} acknowledged, {} jobs; queue empty after {:.1} s",
        killed.as_secs_f64(),
        sent.len(),
        acked.len(),
        jobs.len(),
        began.elapsed().as_secs_f64()
    );
    assert!(
        acked.len() >= rounds,
        "too few deliveries were acknowledged for the test to mean anything"
    );
    for s in &sent {
        if let Some(code) = s.status {
            assert!(
                (200..300).contains(&code) || code == 503,
                "delivery {} was answered {code}",
                s.delivery
            );
        }
    }

    // Every acknowledged delivery is in the store, and made exactly one job (each event fires one trigger).
    let mut jobs_of: BTreeMap<String, Vec<&JobRecord>> = BTreeMap::new();
    for job in &jobs {
        jobs_of
            .entry(job.delivery_id.to_string())
            .or_default()
            .push(job);
    }
    for s in &acked {
        assert!(
            jobs_of.contains_key(&s.delivery),
            "delivery {} ({:?}) was acknowledged and is not in the store",
            s.delivery,
            s.kind
        );
    }
    for (delivery, js) in &jobs_of {
        assert_eq!(js.len(), 1, "delivery {delivery} made {} jobs", js.len());
    }
    assert!(
        store.delivery_count().await.unwrap() >= acked.len() as u64,
        "fewer deliveries stored than acknowledged"
    );

    // Every job succeeded; its agent completed once per server life, nothing of it ran after the run whose
    // result was delivered, and that run is the one GitHub shows.
    let runs = runs(&runs_dir);
    let comments = spine.github.comments();
    let pulls = spine.github.pulls();
    let checks = spine.github.check_runs();
    let kind_of: BTreeMap<String, Kind> =
        sent.iter().map(|s| (s.delivery.clone(), s.kind)).collect();
    for job in &jobs {
        let id = job.id.to_string();
        assert_eq!(
            job.state,
            JobState::Succeeded,
            "job {id}: {:?} ({:?})",
            job.error,
            job.waiting
        );
        let kind = kind_of[&job.delivery_id.to_string()];
        let mine: Vec<&Run> = runs.iter().filter(|r| r.job.to_string() == id).collect();
        let mut done_in = BTreeSet::new();
        for run in mine.iter().filter(|r| r.done) {
            assert!(
                done_in.insert(run.generation),
                "job {id} ran to completion twice under one server: {mine:#?}"
            );
        }
        // The output, exactly once, carrying the nonce of a completed run.
        let marker = format!("nightshift:job:{id} ");
        let marked: Vec<_> = comments
            .iter()
            .filter(|c| c.body.contains(&marker))
            .collect();
        let delivered: String = match kind {
            Kind::Reply => {
                assert_eq!(marked.len(), 1, "job {id}'s comment: {marked:#?}");
                marked[0].body.clone()
            }
            Kind::Fix => {
                assert_eq!(marked.len(), 1, "job {id}'s comment: {marked:#?}");
                // The delivery `crash-N` is about issue N.
                let number = job.delivery_id.to_string();
                let number = number.trim_start_matches("crash-");
                let prs: Vec<_> = pulls
                    .iter()
                    .filter(|p| p.repo == REPO && p.head == format!("nightshift/fix/{number}"))
                    .collect();
                assert_eq!(prs.len(), 1, "job {id}'s pull requests: {prs:#?}");
                assert!(
                    marked[0].body.contains(&format!("/pull/{}", prs[0].number)),
                    "job {id}'s comment does not link its pull request: {}",
                    marked[0].body
                );
                // The branch holds the edit of one run, and no other run's.
                let readme = git(
                    &spine.remote,
                    &["show", &format!("nightshift/fix/{number}:README.md")],
                );
                let edits: Vec<&str> = readme.lines().filter(|l| l.starts_with("run ")).collect();
                assert_eq!(edits.len(), 1, "job {id}'s branch: {readme}");
                edits[0].to_owned()
            }
            Kind::Audit => {
                let external = format!("nightshift-job-{id}");
                let mine: Vec<_> = checks
                    .iter()
                    .filter(|c| c.external_id.as_deref() == Some(external.as_str()))
                    .collect();
                assert_eq!(mine.len(), 1, "job {id}'s check runs: {mine:#?}");
                assert_eq!(mine[0].status, "completed");
                mine[0].output.to_string()
            }
        };
        let shown = mine
            .iter()
            .position(|r| r.done && delivered.contains(&format!("run {}", r.nonce)))
            .unwrap_or_else(|| {
                panic!("job {id}'s output names no completed run: {delivered}\nruns: {mine:#?}")
            });
        assert_eq!(
            shown,
            mine.len() - 1,
            "job {id} ran again after the run it delivered: {mine:#?}"
        );
    }
    spine.assert_no_unexpected_calls();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_and_runs_every_job_once_on_sqlite() {
    crash_test(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_and_runs_every_job_once_on_postgres() {
    let pg = common::postgres::PgServer::start();
    crash_test(Some(pg.url())).await;
}
