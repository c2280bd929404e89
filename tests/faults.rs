//! Exactly once under fire: 200 jobs against a GitHub that fails one write in five (502 before the write,
//! 502 after it, a secondary rate limit with `retry-after`, the connection dropped after the write) and goes
//! down for 30 seconds in the middle. Afterwards every job has exactly one comment on its issue, and no job
//! failed whose output exists. The figures are printed for the issue's note.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::fake_github::Fault;
use common::{Auth, Spine, append_config};
use nightshift::store::JobState;
use serde_json::Value;

const JOBS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_with_one_write_in_five_failing_and_an_outage_post_each_output_once() {
    let trigger = (
        "triage.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: triage it\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    let config = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(
        &spine.config,
        config.replacen("workers: 2\n", "workers: 4\n", 1),
    )
    .unwrap();
    append_config(&spine, "max_jobs_per_hour: 100000\n");
    spine.start().await;
    spine.github.set_fault_rate(
        0.2,
        9,
        &[
            Fault::BadGatewayBefore,
            Fault::BadGatewayAfter,
            Fault::SecondaryRateLimit { retry_after: 1 },
            Fault::DropAfter,
        ],
    );

    let started = Instant::now();
    let mut outage_at = None;
    for n in 1..=JOBS {
        let mut v: Value = serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
        v["issue"]["number"] = n.into();
        let body = serde_json::to_vec(&v).unwrap();
        assert_eq!(spine.deliver("issues", &format!("f-{n}"), &body).await, 202);
        // GitHub goes down for 30 s once a quarter of the jobs were delivered.
        if n == JOBS / 4 {
            spine.github.outage(Duration::from_secs(30));
            outage_at = Some(Instant::now());
        }
    }

    // Every job ends (polling the store; the limit is only there to fail instead of hanging).
    let jobs = loop {
        let jobs = spine.jobs().await;
        let ended = jobs
            .iter()
            .filter(|j| {
                matches!(
                    j.state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                )
            })
            .count();
        if jobs.len() == JOBS as usize && ended == jobs.len() {
            break jobs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{ended} of {} jobs ended: {:#?}",
            jobs.len(),
            jobs.iter()
                .filter(|j| j.state != JobState::Succeeded)
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = started.elapsed();

    let own = spine.github.own_login();
    let comments = spine.github.comments();
    let mut per_issue: BTreeMap<u64, usize> = BTreeMap::new();
    for c in comments.iter().filter(|c| c.author == own) {
        *per_issue.entry(c.number).or_default() += 1;
    }
    let duplicates: Vec<_> = per_issue.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<u64> = (1..=JOBS).filter(|n| !per_issue.contains_key(n)).collect();
    let failed: Vec<_> = jobs
        .iter()
        .filter(|j| j.state != JobState::Succeeded)
        .collect();
    let counts = spine.github.fault_counts();
    let writes = spine.github.writes();
    let waited: u32 = jobs.iter().map(|j| j.retries).sum();
    eprintln!(
        "faults: {JOBS} jobs in {:.1}s (outage of 30s from {:.1}s); {} writes, faults injected {counts:?}; \
         jobs put back to wait {waited} times; duplicates {}; lost {}; failed {}",
        took.as_secs_f64(),
        outage_at
            .map(|t| (t - started).as_secs_f64())
            .unwrap_or_default(),
        writes.len(),
        duplicates.len(),
        lost.len(),
        failed.len()
    );

    assert!(
        duplicates.is_empty(),
        "issues with more than one comment: {duplicates:?}"
    );
    assert!(lost.is_empty(), "issues with no comment: {lost:?}");
    assert!(
        failed.is_empty(),
        "failed jobs (their comments exist): {failed:#?}"
    );
    // Each comment is the job's result, not a progress note left behind.
    for c in comments.iter().filter(|c| c.author == own) {
        assert!(c.body.starts_with("Agent reply for"), "{}", c.body);
    }
    // The faults really happened, of every kind, and the outage too.
    for kind in [
        "502-before",
        "502-after",
        "secondary-rate-limit",
        "drop-after",
        "outage",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} fault: {counts:?}"
        );
    }
    spine.assert_no_unexpected_calls();
}
