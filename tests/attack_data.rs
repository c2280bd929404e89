//! Attacks on what nightshift reads after an agent ran, on its skills folder, on its secrets and on its
//! tokens (issue 8, items 4 and 6): each test performs the attack with a command agent (a prompt-injected
//! agent can run any command) through the real `nightshift serve`, and asserts it was contained and the
//! service stayed responsive.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Auth, SECRET, Spine, git};
use nightshift::store::JobState;
use serde_json::Value;

/// Writes an agent script into the test's folder and returns its path.
fn agent(spine: &Spine, name: &str, body: &str) -> PathBuf {
    let dir = spine.dir.path().join("attack-agents");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(
        &path,
        format!("#!/bin/sh\nset -eu\ncat > /dev/null\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A trigger file `name.yml` running agent `name` on every opened issue, with `extra` YAML lines.
fn on_issue(name: &str, output: &str, extra: &str) -> (String, String) {
    (
        format!("{name}.yml"),
        format!(
            "on:\n  issues:\n    types: [opened]\nagent: {name}\nprompt: go\noutput: {output}\n{extra}"
        ),
    )
}

fn start_triggers(spine: &Spine, triggers: &[(String, String)]) {
    for (name, text) in triggers {
        std::fs::write(spine.dir.path().join("triggers").join(name), text).unwrap();
    }
}

async fn healthz(spine: &Spine) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/healthz", spine.url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The most memory the service has held (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn hostile_output_files_are_refused_and_the_service_stays_responsive() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let attacks = [
        // Read as nightshift, /proc/self/environ is the service's environment, secrets included.
        (
            "environ",
            "ln -s /proc/self/environ \"$NIGHTSHIFT_OUTPUT_DIR/message.md\"",
        ),
        (
            "zero",
            "ln -s /dev/zero \"$NIGHTSHIFT_OUTPUT_DIR/message.md\"",
        ),
        // A blocking read of a FIFO nobody writes would hang a runtime thread; two of them, every thread.
        ("fifo1", "mkfifo \"$NIGHTSHIFT_OUTPUT_DIR/message.md\""),
        (
            "fifo2",
            "mkfifo \"$NIGHTSHIFT_OUTPUT_DIR/review.json\"; echo fine",
        ),
        (
            "sparse",
            "truncate -s 3G \"$NIGHTSHIFT_OUTPUT_DIR/message.md\"",
        ),
        // The output folder itself swapped for a link to a folder holding a "message.md" to leak.
        (
            "outlink",
            "mkdir -p \"$HOME/elsewhere\"; ln -s /proc/self/environ \"$HOME/elsewhere/message.md\"; \
             rm -rf \"$NIGHTSHIFT_OUTPUT_DIR\"; ln -s \"$HOME/elsewhere\" \"$NIGHTSHIFT_OUTPUT_DIR\"",
        ),
        ("plain", "echo 'an ordinary answer'"),
    ];
    // Unboxed and with room for a 3 GiB file: this proves nightshift's own reading of what an agent left,
    // which must hold for `sandbox: none` profiles too (the box and its file-size limit stop most of these
    // earlier: tests/attack_box.rs).
    let mut profiles = String::new();
    let mut triggers = Vec::new();
    for (name, script) in attacks {
        let path = agent(&spine, name, script);
        profiles.push_str(&format!(
            "  {name}: {{command: [{}], timeout: 30s, sandbox: none, limits: {{file_size: 4G}}}}\n",
            path.display()
        ));
        triggers.push(on_issue(name, "comment", ""));
    }
    spine.add_agents(&profiles);
    start_triggers(&spine, &triggers);
    spine
        .start_with_env(&[("SERVICE_ONLY_MARKER", "marker-of-the-service-environment")])
        .await;
    spine
        .deliver_example("issues", "attack-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(attacks.len()).await;
    assert_eq!(healthz(&spine).await, 200, "the service still answers");

    let by_trigger = |t: &str| jobs.iter().find(|j| j.trigger == t).unwrap();
    for (trigger, file, why) in [
        ("environ", "message.md", "a symlink"),
        ("zero", "message.md", "a symlink"),
        ("fifo1", "message.md", "a FIFO"),
        ("fifo2", "review.json", "a FIFO"),
        ("outlink", "the output folder", "a symlink"),
    ] {
        let job = by_trigger(trigger);
        assert_eq!(job.state, JobState::Failed, "{trigger}");
        let error = job.error.as_deref().unwrap();
        assert!(
            error.contains(&format!(
                "{file} is {why}; nightshift reads only regular files"
            )),
            "{trigger}: {error}"
        );
    }
    // A 3 GiB sparse file is a regular file: read up to the profile's cap, and the job says it was cut.
    let sparse = by_trigger("sparse");
    assert_eq!(sparse.state, JobState::Succeeded, "{:?}", sparse.error);
    spine
        .wait_for_log_line(sparse.id, "the agent's message was cut at")
        .await;
    let plain = by_trigger("plain");
    assert_eq!(plain.state, JobState::Succeeded, "{:?}", plain.error);

    // Nothing of the service's environment reached GitHub; each failed job said what failed, in words.
    let comments = spine.wait_for_comments(attacks.len()).await;
    for c in &comments {
        assert!(
            !c.body.contains("marker-of-the-service-environment"),
            "{}",
            c.body
        );
        assert!(!c.body.contains(SECRET), "{}", c.body);
        assert!(
            !c.body.contains(spine.dir.path().to_str().unwrap()),
            "no server paths: {}",
            c.body
        );
    }
    assert!(
        comments.iter().any(|c| c.body.starts_with(
            "This job failed: the agent's result could not be used: message.md is a FIFO; nightshift reads only regular files."
        )),
        "{comments:#?}"
    );
    assert!(
        comments
            .iter()
            .any(|c| c.body.starts_with("an ordinary answer"))
    );

    // Reading the links and the 3 GiB file did not grow the service (it held 6 GiB before the fix).
    let peak = peak_kib(spine.server.as_ref().unwrap().pid());
    eprintln!("the service peaked at {peak} KiB");
    assert!(peak < 300 * 1024, "the service peaked at {peak} KiB");
    spine.assert_no_unexpected_calls();
}

/// The service's skills folder, with one skill, and a snapshot of it to compare with.
fn service_skill(spine: &Spine) -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
    let skills = spine.dir.path().join("skills");
    let dir = skills.join("checklist");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("SKILL.md"),
        "---\nname: checklist\ndescription: The review checklist. Use when reviewing.\n---\n\nCheck it.\n",
    )
    .unwrap();
    let snapshot = snapshot(&skills);
    (skills, snapshot)
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            } else {
                out.push((e.path(), b"(link)".to_vec()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn an_agent_linking_agents_to_the_service_skills_cannot_change_or_delete_them() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let (skills, before) = service_skill(&spine);
    // The agent edits the skill it was given, then swaps `.agents` and `.claude` for links to the
    // service's folder, so that the clean-up's "remove .agents/skills" would remove the service's skills.
    let path = agent(
        &spine,
        "swap",
        &format!(
            "echo pwned > .agents/skills/checklist/SKILL.md\n\
             rm -rf .agents .claude\n\
             ln -s {root} .agents\nln -s {root} .claude\n\
             echo done",
            root = spine.dir.path().display()
        ),
    );
    spine.add_agents(&format!(
        "  swap: {{command: [{}], timeout: 30s}}\n",
        path.display()
    ));
    start_triggers(
        &spine,
        &[on_issue("swap", "pull_request", "skills: [checklist]\n")],
    );
    spine.start().await;
    spine
        .deliver_example("issues", "swap-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    let error = jobs[0].error.as_deref().unwrap();
    assert!(
        error.contains("the agent replaced .agents with a symlink"),
        "{error}"
    );
    assert_eq!(
        snapshot(&skills),
        before,
        "the service's skills are as they were"
    );
    assert!(spine.github.pulls().is_empty(), "nothing was delivered");
    assert_eq!(healthz(&spine).await, 200);
}

#[tokio::test]
async fn a_pull_request_whose_agents_folder_links_to_the_service_is_refused() {
    let review = (
        "review.yml",
        "on: pull_request\nagent: skills\nskills: [checklist]\nprompt: review\noutput: comment\n",
    );
    let mut spine = Spine::new(Auth::Token, &[review]).await;
    let (skills, before) = service_skill(&spine);
    // The pull request's head commits `.agents -> <the service's folder>`: staging would move the
    // service's `skills/` into the job's writable folder.
    let seed = spine.dir.path().join("seed");
    git(&seed, &["checkout", "--quiet", "-B", "evil", "main"]);
    std::os::unix::fs::symlink(spine.dir.path(), seed.join(".agents")).unwrap();
    common::commit_all(&seed, "link");
    git(&seed, &["push", "--quiet", "origin", "HEAD:evil"]);
    let head = git(&seed, &["rev-parse", "HEAD"]);
    spine.start().await;
    let mut v: Value = serde_json::from_slice(&spine.payload("pull_request/opened.json")).unwrap();
    v["pull_request"]["head"]["sha"] = head.into();
    v["pull_request"]["base"]["ref"] = "main".into();
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(spine.deliver("pull_request", "pr-link", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    let error = jobs[0].error.as_deref().unwrap();
    assert!(
        error.contains("the worktree's .agents is a symlink"),
        "{error}"
    );
    assert_eq!(snapshot(&skills), before);
    assert!(!spine.dir.path().join("skills").is_symlink());
    let comments = spine.wait_for_comments(1).await;
    assert!(
        comments[0]
            .body
            .starts_with("This job failed: nightshift could not prepare the repository."),
        "{}",
        comments[0].body
    );
}

#[tokio::test]
async fn a_skill_file_linked_to_a_secret_is_not_copied() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let (skills, _) = service_skill(&spine);
    let secret = spine.dir.path().join("app-key.pem");
    std::fs::write(&secret, "PRIVATE-KEY-CONTENT").unwrap();
    std::os::unix::fs::symlink(&secret, skills.join("checklist/reference.md")).unwrap();
    let path = agent(
        &spine,
        "leak",
        "cat .agents/skills/checklist/reference.md 2>/dev/null || echo 'no reference'",
    );
    spine.add_agents(&format!(
        "  leak: {{command: [{}], timeout: 30s}}\n",
        path.display()
    ));
    start_triggers(
        &spine,
        &[on_issue("leak", "comment", "skills: [checklist]\n")],
    );
    spine.start().await;
    spine
        .deliver_example("issues", "leak-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let comments = spine.wait_for_comments(1).await;
    assert!(
        comments[0].body.starts_with("no reference"),
        "{}",
        comments[0].body
    );
    let log = spine.job_log(jobs[0].id).await;
    assert!(
        log.iter().any(|l| l.line
            == "skipped .agents/skills/checklist/reference.md in a skill: a symlink (nightshift copies only regular files)"),
        "{log:#?}"
    );
}

#[tokio::test]
async fn secrets_an_agent_prints_are_redacted_from_comments_and_logs() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    // Given a key through an `env:` pass-through, and (as if read from somewhere) the webhook secret and
    // the GitHub token, the agent prints them in its message and on stderr.
    let path = agent(
        &spine,
        "printer",
        &format!(
            "echo \"key=$DEPLOY_API_TOKEN\" >&2\n\
             echo \"webhook={SECRET}\" >&2\n\
             printf 'key=%s webhook=%s github=%s\\n' \"$DEPLOY_API_TOKEN\" \"{SECRET}\" '{}'",
            common::TOKEN
        ),
    );
    spine.add_agents(&format!(
        "  printer: {{command: [{}], timeout: 30s, env: [DEPLOY_API_TOKEN]}}\n",
        path.display()
    ));
    start_triggers(&spine, &[on_issue("printer", "comment", "")]);
    spine
        .start_with_env(&[("DEPLOY_API_TOKEN", "dk-live-0123456789abcdef")])
        .await;
    spine
        .deliver_example("issues", "printer-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let comments = spine.wait_for_comments(1).await;
    assert!(
        comments[0]
            .body
            .starts_with("key=[redacted] webhook=[redacted] github=[redacted]\n"),
        "{}",
        comments[0].body
    );
    let log = spine.job_log(jobs[0].id).await;
    let stderr: Vec<&str> = log
        .iter()
        .filter(|l| l.stream == "stderr")
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(stderr, ["key=[redacted]", "webhook=[redacted]"]);
    for l in &log {
        assert!(!l.line.contains("dk-live-0123456789abcdef"), "{}", l.line);
    }
}

#[tokio::test]
async fn a_job_longer_than_its_token_lives_delivers_and_pushes_with_a_fresh_scoped_token() {
    let mut spine = Spine::new(Auth::App, &[]).await;
    // The agent outlives the job's first token (3 s here, an hour on GitHub; the fake refuses it after).
    let path = agent(
        &spine,
        "slow",
        "sleep 4\necho more >> README.md\necho 'Changed it.'",
    );
    spine.add_agents(&format!(
        "  slow: {{command: [{}], timeout: 30s}}\n",
        path.display()
    ));
    start_triggers(&spine, &[on_issue("slow", "pull_request", "")]);
    spine.github.set_token_life(Duration::from_secs(3));
    // The remote over smart HTTP, as GitHub's: git's own requests must carry a live token.
    let remote =
        common::git_http::GitHttp::start(spine.dir.path().to_owned(), spine.github.clone()).await;
    spine.start().await;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    payload["repository"]["clone_url"] = format!("{}/remote.git", remote.url).into();
    let status = spine
        .deliver("issues", "slow-1", &serde_json::to_vec(&payload).unwrap())
        .await;
    assert_eq!(status, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?} {log:#?}",
        jobs[0].error
    );
    // Every call the fake refused (an expired token) would be here.
    spine.assert_no_unexpected_calls();
    // git's own requests: the fetch at the start and the push after the agent, each with a live token (the
    // job's first token had expired by the time of the push).
    let requests = remote.requests();
    assert!(
        requests.iter().all(|r| r.accepted),
        "git presented a dead token: {requests:#?}"
    );
    let pushes: Vec<_> = requests
        .iter()
        .filter(|r| r.service == "git-receive-pack")
        .collect();
    assert!(!pushes.is_empty(), "{requests:#?}");
    let first = requests[0].token.clone();
    assert!(
        pushes.iter().all(|p| p.token != first),
        "the push used a token minted after the agent ended: {requests:#?}"
    );
    assert_eq!(spine.github.pulls().len(), 1);
    // Every token the job used was for Hello-World only, with what a pull request needs.
    let scoped: Vec<_> = spine
        .github
        .mints()
        .into_iter()
        .filter(|m| m.body.get("repositories").is_some())
        .collect();
    assert!(scoped.len() >= 2, "{scoped:#?}");
    for m in &scoped {
        assert_eq!(
            m.body,
            serde_json::json!({
                "repositories": ["Hello-World"],
                "permissions": {
                    "contents": "write", "issues": "write", "metadata": "read", "pull_requests": "write"
                },
            })
        );
    }
    // The fresh one was minted after the agent ended, for the delivery and its push.
    let ended = log
        .iter()
        .position(|l| l.line.starts_with("agent ended:"))
        .unwrap();
    let minted = log
        .iter()
        .position(|l| {
            l.line.starts_with(
                "for the delivery: minted a GitHub token for Codertocat/Hello-World only (contents: write",
            )
        })
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(minted > ended, "{log:#?}");
    assert!(
        !log.iter().any(|l| l.line.contains("ghs_")),
        "tokens never reach the log"
    );
}

#[tokio::test]
async fn a_flood_of_output_is_cut_at_the_job_log_budget() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let text = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(&spine.config, format!("max_job_log: 65536\n{text}")).unwrap();
    // 20 MB of 100-character lines on stderr, as fast as the pipe takes them.
    let path = agent(
        &spine,
        "flood",
        "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 100 >&2\necho 'flooded'",
    );
    spine.add_agents(&format!(
        "  flood: {{command: [{}], timeout: 60s}}\n",
        path.display()
    ));
    start_triggers(&spine, &[on_issue("flood", "comment", "")]);
    spine.start().await;
    spine
        .deliver_example("issues", "flood-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(healthz(&spine).await, 200);
    let log = spine.job_log(jobs[0].id).await;
    let kept: usize = log
        .iter()
        .filter(|l| l.stream == "stderr")
        .map(|l| l.line.len())
        .sum();
    assert!(kept > 0 && kept <= 65536, "{kept} bytes kept");
    let cut = nightshift::agent::log::cut_line(65536);
    assert_eq!(log.iter().filter(|l| l.line == cut).count(), 1, "said once");
    // What came after the flood (nightshift's own lines) is still there.
    assert!(log.iter().any(|l| l.line.starts_with("delivered comment:")));
    let peak = peak_kib(spine.server.as_ref().unwrap().pid());
    eprintln!("the service peaked at {peak} KiB");
    assert!(peak < 300 * 1024, "the service peaked at {peak} KiB");
}

#[tokio::test]
async fn configuration_problems_are_logged_not_posted_and_failures_name_no_server_internals() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let failing = agent(&spine, "failing", "echo \"error in $PWD\" >&2\nexit 3");
    spine.add_agents(&format!(
        "  nokey: {{openai: {{model: m, base_url: \"http://127.0.0.1:9/v1\", api_key_env: NOT_SET_ANYWHERE}}}}\n\
         \x20 nocli: {{command: [/nonexistent/agent-cli], timeout: 30s}}\n\
         \x20 failing: {{command: [{}], timeout: 30s}}\n",
        failing.display()
    ));
    start_triggers(
        &spine,
        &[
            on_issue("nokey", "comment", ""),
            on_issue("nocli", "comment", ""),
            on_issue("failing", "comment", ""),
        ],
    );
    spine.start().await;
    spine
        .deliver_example("issues", "config-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(3).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Failed),
        "{jobs:#?}"
    );
    // Each job's progress comment says how it ended, in words: the agent that failed without its output or
    // the worktree's path; the two configuration problems without a word of what the problem is.
    let comments = spine.wait_for_comments(3).await;
    assert_eq!(comments.len(), 3, "{comments:#?}");
    let failing = jobs.iter().find(|j| j.trigger == "failing").unwrap();
    let said = |job: &nightshift::store::JobRecord| {
        comments
            .iter()
            .find(|c| {
                c.body
                    .contains(&format!("<!-- nightshift:job:{} -->", job.id))
            })
            .unwrap_or_else(|| panic!("no comment for job {}: {comments:#?}", job.id))
            .body
            .clone()
    };
    let body = said(failing);
    assert!(
        body.starts_with(&format!(
            "This job failed: the agent failed.\n\nAn operator can see what happened with `nightshift jobs {}` on the server.",
            failing.id
        )),
        "{body}"
    );
    assert!(!body.contains("error in"));
    assert!(!body.contains(spine.dir.path().to_str().unwrap()));
    // The two configuration problems are the operator's: in the service log, loudly, and on GitHub only as
    // "could not run it".
    for trigger in ["nokey", "nocli"] {
        let job = jobs.iter().find(|j| j.trigger == trigger).unwrap();
        let log = spine.server.as_ref().unwrap().log();
        assert!(
            log.contains(
                "failed because of nightshift's configuration; this is not said on GitHub"
            ),
            "{trigger}: {log}"
        );
        let body = said(job);
        assert!(
            body.starts_with("This job failed: nightshift could not run it."),
            "{body}"
        );
        for secret in ["NOT_SET_ANYWHERE", "agent-cli", "nonexistent", "api_key"] {
            assert!(!body.contains(secret), "{trigger}: {body}");
        }
    }
}

#[tokio::test]
async fn repository_instructions_and_skills_linked_to_the_services_secrets_are_not_read() {
    use common::model_server::{ChatReply, ModelServer};
    let model = ModelServer::chat(vec![ChatReply::Answer("Summary.".into(), 10, 2)]).await;
    let trigger = (
        "summary.yml",
        "on:\n  issues:\n    types: [opened]\nagent: summarizer\nskills: auto\nprompt: Summarize.\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    spine.add_agents(&format!(
        "  summarizer: {{openai: {{model: m, base_url: \"{}/v1\"}}}}\n",
        model.url
    ));
    // The default branch links its instructions and a skill to the service's own environment, and a
    // skill's reference to a secret file of the service.
    let secret = spine.dir.path().join("service-secret.pem");
    std::fs::write(&secret, "SERVICE-SECRET-FILE").unwrap();
    let seed = spine.dir.path().join("seed");
    std::os::unix::fs::symlink("/proc/self/environ", seed.join("AGENTS.md")).unwrap();
    std::fs::create_dir_all(seed.join("web")).unwrap();
    std::fs::write(seed.join("web/AGENTS.md"), "Use pnpm.\n").unwrap();
    let skills = seed.join(".agents/skills");
    std::fs::create_dir_all(skills.join("leak")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", skills.join("leak/SKILL.md")).unwrap();
    std::fs::create_dir_all(skills.join("style")).unwrap();
    std::fs::write(
        skills.join("style/SKILL.md"),
        "---\nname: style\ndescription: House style. Use always.\n---\n\nBe terse.\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, skills.join("style/reference.md")).unwrap();
    common::commit_all(&seed, "links");
    git(&seed, &["push", "--quiet", "origin", "HEAD:main"]);
    spine
        .start_with_env(&[("SERVICE_ONLY_MARKER", "marker-of-the-service-environment")])
        .await;
    spine
        .deliver_example("issues", "links-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let requests = model.requests();
    assert_eq!(requests.len(), 1);
    let prompt = requests[0].body.to_string();
    assert!(
        prompt.contains("Use pnpm."),
        "the plain file is read: {prompt}"
    );
    assert!(
        prompt.contains("Be terse."),
        "the plain skill is read: {prompt}"
    );
    for leaked in ["marker-of-the-service-environment", "SERVICE-SECRET-FILE"] {
        assert!(
            !prompt.contains(leaked),
            "{leaked} reached the model: {prompt}"
        );
    }
    let comments = spine.wait_for_comments(1).await;
    assert!(
        !comments[0]
            .body
            .contains("marker-of-the-service-environment")
    );
}
