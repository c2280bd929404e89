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
