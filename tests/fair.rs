//! Fair and bounded: one flooding repository does not starve another (not in the dispatcher, not in the
//! workers), and an agent profile's `max_concurrent` holds.

mod common;

use common::{Auth, Spine};
use nightshift::store::JobState;
use serde_json::Value;

/// 200 events from one repository, then one from another: the other's job is started long before the
/// flood's backlog is done (the dispatcher reads each repository's oldest waiting delivery; workers claim from
/// the repository served least recently).
#[tokio::test]
async fn a_flood_from_one_repository_does_not_starve_another() {
    let reply = (
        "reply.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: hi\nprogress: false\n",
    );
    let mut spine = Spine::new(Auth::Token, &[reply]).await;
    spine.start().await;
    let flood = spine.payload("issues/opened.json");
    for n in 0..200 {
        assert_eq!(
            spine.deliver("issues", &format!("flood-{n}"), &flood).await,
            202
        );
    }
    let mut quiet: Value = serde_json::from_slice(&flood).unwrap();
    quiet["repository"]["full_name"] = "Quiet/Corner".into();
    quiet["repository"]["name"] = "Corner".into();
    quiet["repository"]["owner"]["login"] = "Quiet".into();
    let quiet = serde_json::to_vec(&quiet).unwrap();
    assert_eq!(spine.deliver("issues", "quiet-1", &quiet).await, 202);

    let mut jobs = Vec::new();
    for _ in 0..1200 {
        jobs = spine.jobs().await;
        if jobs
            .iter()
            .any(|j| j.repo == "Quiet/Corner" && j.state == JobState::Succeeded)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let quiet_job = jobs
        .iter()
        .find(|j| j.repo == "Quiet/Corner")
        .expect("the quiet repository's job was queued");
    assert_eq!(
        quiet_job.state,
        JobState::Succeeded,
        "{:?}",
        quiet_job.error
    );
    let (quiet_queued, quiet_start) = (quiet_job.created_at, quiet_job.started_at.unwrap());
    let flood: Vec<_> = jobs.iter().filter(|j| j.repo != "Quiet/Corner").collect();
    // The flood's jobs queued before the quiet one and started after it: it overtook the backlog.
    let overtaken = flood
        .iter()
        .filter(|j| j.created_at < quiet_queued && j.started_at.is_none_or(|s| s > quiet_start))
        .count();
    // The flood's jobs started while the quiet one waited: at most one per worker (two), that were
    // already being claimed.
    let cut_in = flood
        .iter()
        .filter(|j| {
            j.started_at
                .is_some_and(|s| s >= quiet_queued && s < quiet_start)
        })
        .count();
    let flood_waiting = flood
        .iter()
        .filter(|j| j.state != JobState::Succeeded)
        .count();
    assert!(
        overtaken > 0,
        "the quiet job overtook none of the flood's queued jobs"
    );
    assert!(
        cut_in <= 2,
        "{cut_in} of the flood's jobs started while the quiet repository's one waited"
    );
    assert!(flood_waiting > 0, "the flood was done first");
}

/// An agent profile with `max_concurrent: 1` never runs two jobs at once, with four workers and four jobs
/// (the agent itself records any overlap it sees), and every job still runs.
#[tokio::test]
async fn a_profile_limit_of_one_never_runs_two_of_its_jobs_at_once() {
    let solo = (
        "solo.yml",
        "on:\n  issues:\n    types: [opened]\nagent: solo\nprompt: hi\nprogress: false\n",
    );
    let mut spine = Spine::new(Auth::Token, &[solo]).await;
    let dir = spine.dir.path().join("solo");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("solo.sh");
    std::fs::write(
        &script,
        "set -eu\ndir=$1\nme=$(mktemp \"$dir/running-XXXXXX\")\n\
         if [ \"$(ls \"$dir\" | grep -c '^running-')\" -gt 1 ]; then touch \"$dir/overlap-$(basename \"$me\")\"; fi\n\
         sleep 0.5\n\
         if [ \"$(ls \"$dir\" | grep -c '^running-')\" -gt 1 ]; then touch \"$dir/overlap-late-$(basename \"$me\")\"; fi\n\
         rm \"$me\"\ntouch \"$dir/done-$(basename \"$me\")\"\necho done\n",
    )
    .unwrap();
    spine.add_agents(&format!(
        "  solo: {{command: [/bin/sh, {script}, {dir}], timeout: 30s, shared: {{writable: [{dir}]}}, max_concurrent: 1}}\n",
        script = script.display(),
        dir = dir.display()
    ));
    let text = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(&spine.config, text.replace("workers: 2", "workers: 4")).unwrap();
    spine.start().await;
    for n in 0..4 {
        spine
            .deliver_example("issues", &format!("solo-{n}"), "issues/opened.json")
            .await;
    }
    let jobs = spine.wait_for_finished_jobs(4).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:#?}"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("done-")).count(),
        4,
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("overlap")),
        "two jobs of the profile ran at once: {names:?}"
    );
}
