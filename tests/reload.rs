//! Trigger files change while the service runs: the new version takes over without a restart, and a file
//! that became invalid keeps its last good version.

mod common;

use std::time::Duration;

use common::{Auth, Spine};

fn trigger(prompt: &str) -> String {
    format!("on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: {prompt}\n")
}

async fn comment_for(spine: &mut Spine, delivery: &str, n: usize) -> String {
    assert_eq!(
        spine
            .deliver("issues", delivery, &spine.payload("issues/opened.json"))
            .await,
        202
    );
    spine.wait_for_finished_jobs(n).await;
    spine.github.comments().last().unwrap().body.clone()
}

#[tokio::test]
async fn edited_trigger_files_are_reloaded_and_broken_ones_keep_their_last_good_version() {
    let first = trigger("first-version");
    let mut spine = Spine::new(Auth::Token, &[("t.yml", first.as_str())]).await;
    spine.start().await;
    assert!(
        comment_for(&mut spine, "d1", 1)
            .await
            .contains("first-version")
    );

    let file = spine.dir.path().join("triggers/t.yml");
    std::fs::write(&file, trigger("second-version")).unwrap();
    let pid = spine.server.as_ref().unwrap().pid() as i32;
    // SAFETY: signals the nightshift process this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        comment_for(&mut spine, "d2", 2)
            .await
            .contains("second-version"),
        "SIGHUP reloads"
    );

    std::fs::write(&file, "on: issues\nagent: nobody\nprompt: third-version\n").unwrap();
    // No signal this time: the change itself is noticed.
    let log = || spine.server.as_ref().unwrap().log();
    for _ in 0..100 {
        if log().contains("agent `nobody` is not a profile") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log().contains("the file's last good version, if any, stays in force"),
        "{}",
        log()
    );
    assert!(
        comment_for(&mut spine, "d3", 3)
            .await
            .contains("second-version"),
        "the last good version runs"
    );
}

#[tokio::test]
async fn a_repositorys_own_triggers_come_from_its_default_branch_and_follow_pushes_to_it() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    spine.commit(
        "main",
        "main",
        ".nightshift/triggers/own.yml",
        &trigger("own-v1"),
    );
    // A branch (a pull request's head) that adds a trigger of its own: it must never run.
    let evil = "on: pull_request\nagent: reply\nprompt: evil\n";
    let evil_head = spine.commit("main", "evil", ".nightshift/triggers/evil.yml", evil);
    spine.start().await;

    let body = comment_for(&mut spine, "o1", 1).await;
    assert!(body.contains("own-v1"), "{body}");
    assert_eq!(spine.jobs().await[0].trigger, "Hello-World.own");

    let mut pr: serde_json::Value =
        serde_json::from_slice(&spine.payload("pull_request/opened.json")).unwrap();
    pr["pull_request"]["head"]["sha"] = evil_head.into();
    pr["pull_request"]["base"]["ref"] = "main".into();
    assert_eq!(
        spine
            .deliver("pull_request", "pr-evil", &serde_json::to_vec(&pr).unwrap())
            .await,
        202
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        spine.jobs().await.len(),
        1,
        "a trigger on a pull request's branch does not run"
    );

    // A push to the default branch changes the trigger; the next event uses the new version.
    let head = spine.commit(
        "main",
        "main",
        ".nightshift/triggers/own.yml",
        &trigger("own-v2"),
    );
    let mut push: serde_json::Value =
        serde_json::from_slice(&spine.payload("push/with-new-branch.json")).unwrap();
    push["ref"] = "refs/heads/main".into();
    push["after"] = head.into();
    push["deleted"] = false.into();
    assert_eq!(
        spine
            .deliver("push", "push-main", &serde_json::to_vec(&push).unwrap())
            .await,
        202
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let body = comment_for(&mut spine, "o2", 2).await;
    assert!(body.contains("own-v2"), "{body}");
    spine.assert_no_unexpected_calls();
}
