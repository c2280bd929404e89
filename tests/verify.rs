//! Verified work: the trigger's `verify:` steps run in the agent's box after it ends; a failing step goes
//! back to the agent with its output; only verified work is pushed and posted, with the evidence.

mod common;

use common::{Auth, Spine, git, manifest_dir};
use nightshift::store::{JobRecord, JobState};
use serde_json::Value;

const REPO: &str = "Codertocat/Hello-World";

fn labeled(spine: &Spine, number: u64) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&spine.payload("issues/labeled.json")).unwrap();
    v["issue"]["number"] = number.into();
    serde_json::to_vec(&v).unwrap()
}

const STEP: &str = "verify:\n  - name: answer\n    run: 'a=$(cat answer.txt); [ \"$a\" = 42 ] || { echo \"expected 42, got $a\"; exit 1; }'\n    timeout: 30s\n";

fn trigger(agent: &str, output: &str, extra: &str) -> String {
    format!(
        "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: {agent}\nprompt: write the answer\noutput: {output}\n{STEP}{extra}"
    )
}

async fn spine_with(triggers: &[(&str, &str)]) -> Spine {
    let spine = Spine::new(Auth::App, triggers).await;
    let script = manifest_dir().join("tests/agents/verify-fixer.sh");
    spine.add_agents(&format!(
        "  fixes: {{command: [{s}, fixes], timeout: 60s}}\n  never: {{command: [{s}, never], timeout: 60s}}\n",
        s = script.display()
    ));
    spine
}

#[tokio::test]
async fn a_failing_step_goes_back_to_the_agent_and_the_pull_request_opens_once_after_round_two() {
    let fix = trigger("fixes", "pull_request", "");
    let mut spine = spine_with(&[("fix.yml", fix.as_str())]).await;
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let log = spine.job_log(jobs[0].id).await;
    let lines: Vec<&str> = log.iter().map(|l| l.line.as_str()).collect();
    // Round 1 failed the step; round 2 was given its output and fixed it.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("agent ended"))
            .count(),
        2,
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("verify: `answer` failed")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("expected 42, got 41")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("verify: `answer` passed")),
        "{lines:#?}"
    );
    let pulls = spine.github.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(!pulls[0].draft);
    assert!(pulls[0].body.contains("`answer`"), "{}", pulls[0].body);
    assert!(
        pulls[0].body.contains("Fixed the answer"),
        "{}",
        pulls[0].body
    );
    assert_eq!(
        git(&spine.remote, &["show", "nightshift/fix/1:answer.txt"]),
        "42"
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn work_that_never_passes_is_not_pushed_and_its_check_fails_with_the_steps_output() {
    let fix = trigger("never", "pull_request", "verify_rounds: 1\n");
    let check = trigger("never", "check_run", "verify_rounds: 0\n");
    let mut spine = spine_with(&[("fix.yml", fix.as_str()), ("check.yml", check.as_str())]).await;
    spine.start().await;
    // The check run needs a commit: a push event would give one; an issue's job works on the default branch.
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    for job in &jobs {
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        assert!(
            job.error
                .as_deref()
                .unwrap()
                .contains("failed verification"),
            "{:?}",
            job.error
        );
    }
    assert!(spine.github.pulls().is_empty(), "nothing opened");
    assert!(
        git(&spine.remote, &["branch", "--list", "nightshift/*"]).is_empty(),
        "nothing pushed"
    );
    // Each job's comment names the failing step with its output.
    let comments: Vec<_> = spine
        .github
        .comments()
        .into_iter()
        .filter(|c| c.repo == REPO && c.number == 1)
        .collect();
    assert_eq!(comments.len(), 2, "{comments:#?}");
    for c in &comments {
        assert!(
            c.body.contains("`answer`") && c.body.contains("expected 42, got 41"),
            "{}",
            c.body
        );
    }
    let runs = spine.github.check_runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].conclusion.as_deref(), Some("failure"));
    assert!(
        runs[0].output["summary"]
            .as_str()
            .unwrap()
            .contains("expected 42, got 41"),
        "{:#?}",
        runs[0].output
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn verify_fail_draft_opens_a_labelled_draft() {
    let fix = trigger(
        "never",
        "pull_request",
        "verify_rounds: 0\nverify_fail: draft\n",
    );
    let mut spine = spine_with(&[("fix.yml", fix.as_str())]).await;
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let pulls = spine.github.all_pulls();
    let pr = pulls.iter().find(|p| p.head == "nightshift/fix/1").unwrap();
    assert!(pr.draft);
    assert!(pr.title.starts_with("[failing `answer`]"), "{}", pr.title);
    assert!(
        pr.labels
            .iter()
            .any(|l| l == "nightshift: verification failed"),
        "{:?}",
        pr.labels
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_step_runs_in_the_box_and_cannot_read_the_services_files() {
    let config_peek = "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: fixes\nprompt: x\noutput: pull_request\nverify:\n  - name: peek\n    argv: [cat, CONFIG]\nverify_rounds: 0\n";
    let mut spine = spine_with(&[]).await;
    let config = spine.config.display().to_string();
    let trigger = config_peek.replace("CONFIG", &config);
    std::fs::write(spine.dir.path().join("triggers/peek.yml"), trigger).unwrap();
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed, "{:?}", jobs[0].error);
    let log = spine.job_log(jobs[0].id).await;
    assert!(
        !log.iter().any(|l| l.line.contains("webhook_secrets")),
        "the step read the service's config: {log:#?}"
    );
    assert!(spine.github.pulls().is_empty());
}

/// A pull request that changes a repository trigger's `verify:` cannot change the steps its own job runs:
/// repository triggers are read from the default branch.
#[tokio::test]
async fn a_pull_request_cannot_change_the_steps_that_verify_it() {
    let mut spine = spine_with(&[]).await;
    let on_main = "on: pull_request\nfrom: anyone\nforks: allow\nagent: fixes\nprompt: x\nprogress: false\nverify:\n  - name: guard\n    run: 'echo main says no; exit 7'\nverify_rounds: 0\n";
    spine.commit("main", "main", ".nightshift/triggers/guard.yml", on_main);
    let in_pr = on_main.replace("echo main says no; exit 7", "true");
    let head = spine.commit("main", "feature", ".nightshift/triggers/guard.yml", &in_pr);
    spine.start().await;
    let mut v: Value = serde_json::from_slice(&spine.payload("pull_request/opened.json")).unwrap();
    v["pull_request"]["head"]["sha"] = head.into();
    v["pull_request"]["head"]["ref"] = "feature".into();
    v["pull_request"]["head"]["repo"] = v["pull_request"]["base"]["repo"].clone();
    v["pull_request"]["base"]["ref"] = "main".into();
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(spine.deliver("pull_request", "pr-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed, "{:?}", jobs[0].error);
    let log = spine.job_log(jobs[0].id).await;
    assert!(
        log.iter().any(|l| l.line == "main says no"),
        "the default branch's step ran: {log:#?}"
    );
}

/// A step has the agent's network: none (the fake GitHub listens on this machine's loopback, which the box
/// does not share).
#[tokio::test]
async fn a_step_cannot_reach_the_network() {
    let mut spine = spine_with(&[]).await;
    let url = spine.github.url.clone();
    let trigger = format!(
        "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: fixes\nprompt: x\nprogress: false\noutput: comment\nverify:\n  - name: reach\n    argv: [curl, -sS, --max-time, '5', '{url}/zen']\nverify_rounds: 0\n"
    );
    std::fs::write(spine.dir.path().join("triggers/reach.yml"), trigger).unwrap();
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed, "{:?}", jobs[0].error);
    assert!(
        !spine.github.calls().iter().any(|c| c.contains("/zen")),
        "the step reached the fake GitHub: {:?}",
        spine.github.calls()
    );
}

/// A prompt-injected agent writes the wrong answer, then makes the step that checks it pass without changing
/// the step or the pushed work: a Python `usercustomize` in its home that ends every Python process with
/// success. Steps run with a home, temporary and output folder of their own, empty, so the step sees the
/// wrong answer, nothing is pushed, and the check fails.
/// One job of agent `agent` (the shell `script`) under a pull-request trigger whose verify section is
/// `step`, with no second round: the spine, the job and its log's lines.
async fn one_round(agent: &str, script: &str, step: &str) -> (Spine, JobRecord, Vec<String>) {
    let fix = format!(
        "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: {agent}\nprompt: write the answer\noutput: pull_request\nverify_rounds: 0\n{step}"
    );
    let mut spine = Spine::new(Auth::App, &[("fix.yml", fix.as_str())]).await;
    common::attacker(&spine, agent, script, "");
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let lines = spine
        .job_log(job.id)
        .await
        .into_iter()
        .map(|l| l.line)
        .collect();
    (spine, job, lines)
}

/// The job failed verification, and nothing was opened or pushed.
fn assert_refused(spine: &Spine, job: &JobRecord, lines: &[String]) {
    assert_eq!(job.state, JobState::Failed, "{lines:#?}");
    assert!(
        job.error
            .as_deref()
            .is_some_and(|e| e.contains("failed verification")),
        "{:?}",
        job.error
    );
    assert!(spine.github.pulls().is_empty(), "nothing opened");
    assert!(
        git(&spine.remote, &["branch", "--list", "nightshift/*"]).is_empty(),
        "nothing pushed"
    );
}

#[tokio::test]
async fn what_the_agent_leaves_in_its_home_cannot_make_a_step_pass() {
    let step = "verify:\n  - name: answer\n    run: python3 -c \"import sys; sys.exit(0 if open('answer.txt').read().strip() == '42' else 1)\"\n    timeout: 30s\n";
    let (spine, job, lines) = one_round(
        "cheater",
        r#"echo 41 > answer.txt
site=$(python3 -m site --user-site)
mkdir -p "$site" "$HOME/.config"
printf 'import os\nos._exit(0)\n' > "$site/usercustomize.py"
# The same trick, checked here: with it, a Python process that should fail passes.
python3 -c 'import sys; sys.exit(1)' && echo "planted: python exits 0" >&2
echo "Wrote the answer."
"#,
        step,
    )
    .await;
    assert!(
        lines.iter().any(|l| l == "planted: python exits 0"),
        "the trick works in the agent's own home: {lines:#?}"
    );
    assert_refused(&spine, &job, &lines);
}

#[tokio::test]
async fn what_git_leaves_out_of_the_commit_cannot_make_a_step_pass() {
    // The answer the step checks is right in the worktree, but the agent's own `.gitignore` hides it:
    // the pull request would carry no answer while its body said the step passed.
    let (spine, job, lines) = one_round(
        "cheater",
        r#"printf 'answer.txt\nnode_modules/\n' > .gitignore
echo 42 > answer.txt
mkdir -p node_modules/.bin && printf '#!/bin/sh\nexit 0\n' > node_modules/.bin/check
echo "Wrote the answer."
"#,
        STEP,
    )
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("verify: the steps run on a fresh checkout")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("expected 42, got")),
        "the step did not find the hidden answer: {lines:#?}"
    );
    assert_refused(&spine, &job, &lines);
}

#[tokio::test]
async fn a_step_that_changes_the_work_fails_and_the_agent_is_told_which_files() {
    // The step runs code of the pull request (its check script, as tests are): the script passes and
    // rewrites the answer, so what it checked is not what the commit would hold.
    let (spine, job, lines) = one_round(
        "cheater",
        r#"echo 42 > answer.txt
printf '[ "$(cat answer.txt)" = 42 ] && echo 41 > answer.txt\n' > check.sh
echo "Wrote the answer."
"#,
        "verify:\n  - name: answer\n    run: sh ./check.sh\n    timeout: 30s\n",
    )
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("verify: `answer` failed (it changed files the commit holds)")),
        "{lines:#?}"
    );
    let comments = spine.github.comments();
    assert!(
        comments
            .iter()
            .any(|c| c.body.contains("`answer.txt`") && c.body.contains("must check the work")),
        "{comments:#?}"
    );
    assert_refused(&spine, &job, &lines);
}

#[tokio::test]
async fn steps_see_the_agents_new_files_as_git_does_and_may_write_reports() {
    // A step that asks git which files there are (as pre-commit or `git ls-files | xargs` do) finds the
    // agent's new file, and writing a report beside the work is no change of the work.
    let (spine, job, lines) = one_round(
        "honest",
        "echo 42 > answer.txt\necho \"Wrote the answer.\"\n",
        // A first step that runs the work's code could put a repository of its own in the checkout's
        // `.git`: the next step's git still reads nightshift's.
        // `git diff --cached` reads the new file's contents, which are not in the mirror (the steps'
        // git is shown where they are).
        "verify:\n  - name: clobber\n    run: 'rm -f .git && git init -q .'\n    timeout: 30s\n  - name: answer\n    run: 'git ls-files | grep -qx answer.txt && git diff --cached --name-only HEAD | grep -qx answer.txt && git diff --cached HEAD -- answer.txt | grep -qx +42 && echo ok > report.xml && [ \"$(cat answer.txt)\" = 42 ]'\n    timeout: 30s\n",
    )
    .await;
    assert_eq!(job.state, JobState::Succeeded, "{lines:#?}");
    let pulls = spine.github.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let files = git(
        &spine.remote,
        &["ls-tree", "-r", "--name-only", &pulls[0].head],
    );
    assert!(files.lines().any(|f| f == "answer.txt"), "{files}");
    assert!(
        !files.contains("report.xml"),
        "the step's report is not pushed: {files}"
    );
}

#[tokio::test]
async fn a_committed_link_into_the_agents_home_reads_nothing_in_a_step() {
    // The pushed answer is a link to a file only the agent's home holds: the step must not find it there.
    let (spine, job, lines) = one_round(
        "cheater",
        r#"echo 42 > "$HOME/answer"
ln -s "$HOME/answer" answer.txt
echo "Wrote the answer."
"#,
        STEP,
    )
    .await;
    assert!(
        lines.iter().any(|l| l.contains("expected 42, got")),
        "{lines:#?}"
    );
    assert_refused(&spine, &job, &lines);
}

#[tokio::test]
async fn the_files_of_rounds_that_failed_never_reach_the_repositorys_mirror() {
    // Each round, the agent writes a megabyte it never wrote before; the step always fails. What a
    // round's checkout held is not stored in the mirror, where every round's files would pile up (one
    // agent's sixteen gigabytes, six rounds) until a `gc` weeks later, past any limit of the job.
    let script = r#"head -c 1048576 /dev/urandom > noise.bin
echo 41 > answer.txt
echo "blob $(git hash-object noise.bin)" >&2
echo "Wrote the answer."
"#;
    let fix = format!(
        "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: noisy\nprompt: write the answer\noutput: pull_request\nverify_rounds: 2\n{STEP}"
    );
    let mut spine = Spine::new(Auth::App, &[("fix.yml", fix.as_str())]).await;
    common::attacker(&spine, "noisy", script, "");
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let lines: Vec<String> = spine
        .job_log(job.id)
        .await
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_refused(&spine, &job, &lines);
    let blobs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("blob "))
        .collect();
    assert_eq!(blobs.len(), 3, "three rounds: {lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("verify: `answer` failed (exit status: 1) in"))
            .count(),
        3,
        "each round's checkout held its noise and was checked: {lines:#?}"
    );
    let mirror = spine
        .dir
        .path()
        .join("data/mirrors/Codertocat/Hello-World.git");
    assert!(mirror.join("objects").is_dir(), "{}", mirror.display());
    for blob in blobs {
        let found = std::process::Command::new("git")
            .arg(format!("--git-dir={}", mirror.display()))
            .args(["cat-file", "-e", blob])
            .status()
            .unwrap();
        assert!(!found.success(), "{blob} is in the mirror");
    }
}
