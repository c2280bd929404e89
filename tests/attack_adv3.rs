//! The third adversary's attacks (docs/security-adv3.md): each runs what a prompt-injected agent or a
//! stranger would, against the real service, and asserts the service stayed up and nothing leaked.

mod common;

use std::path::PathBuf;

use common::{Auth, Spine};
use nightshift::store::JobState;

/// Writes an executable agent script into the world's own folder and adds it as profile `name` with
/// `extra` YAML keys.
fn attacker(spine: &Spine, name: &str, script: &str, extra: &str) -> PathBuf {
    let dir = spine.dir.path().join("attackers");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(&path, format!("#!/bin/bash\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    spine.add_agents(&format!(
        "  {name}: {{command: [{}], timeout: 60s{extra}}}\n",
        path.display(),
    ));
    path
}

async fn healthy(spine: &Spine) {
    let body = reqwest::get(format!("{}/healthz", spine.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");
}

/// An agent leaves folder trees 20,000 deep in its home and in its worktree. `std::fs::remove_dir_all`
/// goes down one call per level: removing the job's folder overflowed the stack of the runtime thread
/// that did it and aborted the service, and again at each start, which clears the folders of dead attempts.
#[tokio::test]
async fn folders_nested_deeper_than_a_stack_allows_are_removed_and_the_service_stays_up() {
    let trigger = (
        "deep.yml",
        "on:\n  issues:\n    types: [opened]\nagent: deep\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    let script = r#"cat > /dev/null
python3 - <<'PY'
import os
for top in (os.environ["HOME"], os.getcwd()):
    fd = os.open(top, os.O_RDONLY)
    for _ in range(20000):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
print("nested 20000 deep in the home and the worktree")
PY
"#;
    attacker(&spine, "deep", script, "");
    spine.start().await;
    spine
        .deliver_example("issues", "deep-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?} {log:?}",
        jobs[0].error
    );
    assert!(
        spine.github.comments()[0]
            .body
            .contains("nested 20000 deep"),
        "{log:?}"
    );
    healthy(&spine).await;
    // The attempt's folder is gone with everything in it.
    let jobs_dir = spine.dir.path().join("data/jobs");
    let left: Vec<_> = std::fs::read_dir(&jobs_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with(&format!("{}-", jobs[0].id))),
        "{left:?}"
    );
}
