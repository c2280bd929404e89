//! One real event, end to end: signed webhook → SQLite → trigger → job → git worktree → agent process →
//! GitHub (the fake), through the real `nightshift` binary.

mod common;

use std::time::Duration;

use common::{Auth, Spine, git, sign};
use nightshift::store::{JobState, Store};

const ISSUE_OPENED_COMMENT: (&str, &str) = (
    "triage.yml",
    "description: Answer new issues\n\
     on:\n  issues:\n    types: [opened]\n\
     agent: reply\n\
     prompt: |\n  Triage issue #{{ event.issue.number }} in {{ repo }}: {{ event.issue.title | trusted }}\n\
     output: comment\n",
);

const ISSUE_LABELED_PR: (&str, &str) = (
    "fix.yml",
    "on:\n  issues:\n    types: [labeled]\nagent: edit\nprompt: \"Fixed: {{ event.issue.title | trusted }}\"\noutput: pull_request\n",
);

#[tokio::test]
async fn an_opened_issue_gets_the_agents_comment_through_a_github_app() {
    let mut spine = Spine::new(Auth::App, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "d-opened-1", &body).await, 202);

    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(
        (jobs[0].trigger.as_str(), jobs[0].repo.as_str()),
        ("triage", "Codertocat/Hello-World")
    );

    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    let comment = &comments[0];
    assert_eq!(
        (comment.repo.as_str(), comment.number),
        ("Codertocat/Hello-World", 1)
    );
    let job = jobs[0].id;
    assert!(
        comment.body.starts_with(&format!(
            "Agent reply for Codertocat/Hello-World (job {job}, event issues.opened):\n\
             Triage issue #1 in Codertocat/Hello-World: Spelling error in the README file\n"
        )),
        "{}",
        comment.body
    );
    assert!(
        comment
            .body
            .contains(&format!("<!-- nightshift:job:{job} -->"))
    );
    // The job's token, minted with the App JWT, for its one repository and what a comment needs.
    let scoped: Vec<_> = spine
        .github
        .mints()
        .into_iter()
        .filter(|m| m.body.get("repositories").is_some())
        .map(|m| m.body)
        .collect();
    assert_eq!(
        scoped,
        [serde_json::json!({
            "repositories": ["Hello-World"],
            "permissions": {"contents": "read", "issues": "write", "metadata": "read"},
        })]
    );
    spine.assert_no_unexpected_calls();

    // The agent's stderr is in the job log, as is what nightshift did.
    let log = spine.job_log(job).await;
    assert!(
        log.iter()
            .any(|l| l.stream == "stderr" && l.line == "reading the issue"),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.stream == "nightshift"
        && l.line.starts_with("delivered comment: https://github.com/")));
    // The worktree is gone once the job ended.
    let worktrees = spine.dir.path().join("data/worktrees");
    assert_eq!(std::fs::read_dir(worktrees).unwrap().count(), 0);
}

#[tokio::test]
async fn a_labeled_issue_becomes_a_branch_and_a_pull_request() {
    let mut spine = Spine::new(Auth::Token, &[ISSUE_LABELED_PR]).await;
    spine.start().await;
    let body = spine.payload("issues/labeled.json");
    assert_eq!(spine.deliver("issues", "d-labeled-1", &body).await, 202);

    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);

    // The change is on nightshift's branch in the remote, committed by nightshift; main is untouched.
    let branch = "nightshift/fix/1";
    let readme = git(&spine.remote, &["show", &format!("{branch}:README.md")]);
    assert_eq!(
        readme,
        "# Hello-World\nFixed: Spelling error in the README file"
    );
    assert_eq!(
        git(&spine.remote, &["log", "-1", "--format=%an <%ae>", branch]),
        "nightshift <nightshift@users.noreply.github.com>"
    );
    assert_eq!(
        git(&spine.remote, &["show", "main:README.md"]),
        "# Hello-World"
    );

    let pulls = spine.github.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(
        (pulls[0].head.as_str(), pulls[0].base.as_str()),
        (branch, "main")
    );
    assert_eq!(pulls[0].title, "Spelling error in the README file (#1)");
    assert!(
        pulls[0]
            .body
            .starts_with("Closes #1.\n\nAppended the requested line to README.md."),
        "{}",
        pulls[0].body
    );
    // The issue's one comment said it was working, and now links the pull request.
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(
        comments[0]
            .body
            .contains(&format!("/pull/{}", pulls[0].number)),
        "{}",
        comments[0].body
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn an_agent_that_changes_nothing_gets_a_comment_instead_of_a_pull_request() {
    let no_change = (
        "fix.yml",
        "on:\n  issues:\n    types: [labeled]\nagent: reply\nprompt: look\noutput: pull_request\n",
    );
    let mut spine = Spine::new(Auth::Token, &[no_change]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "d-1", "issues/labeled.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert!(spine.github.pulls().is_empty());
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0]
            .body
            .starts_with("The agent made no changes, so there is no pull request.")
    );
    assert!(
        git(&spine.remote, &["branch", "--list", "nightshift/*"]).is_empty(),
        "nothing was pushed"
    );
}

#[tokio::test]
async fn bad_deliveries_are_refused_and_nothing_is_stored() {
    let mut spine = Spine::new(Auth::Token, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    let good_sig = sign(common::SECRET, &body);
    let wrong_sig = sign("not the secret", &body);

    // Missing or wrong signature: 401.
    assert_eq!(
        spine
            .post(
                &body,
                &[("X-GitHub-Event", "issues"), ("X-GitHub-Delivery", "a")]
            )
            .await,
        401
    );
    let wrong = [
        ("X-GitHub-Event", "issues"),
        ("X-GitHub-Delivery", "b"),
        ("X-Hub-Signature-256", wrong_sig.as_str()),
    ];
    assert_eq!(spine.post(&body, &wrong).await, 401);
    // Signed with the secret but altered afterwards: 401.
    let mut altered = body.clone();
    altered.push(b' ');
    let altered_headers = [
        ("X-GitHub-Event", "issues"),
        ("X-GitHub-Delivery", "c"),
        ("X-Hub-Signature-256", good_sig.as_str()),
    ];
    assert_eq!(spine.post(&altered, &altered_headers).await, 401);
    // Missing event or delivery headers: 400.
    assert_eq!(
        spine
            .post(
                &body,
                &[
                    ("X-GitHub-Delivery", "d"),
                    ("X-Hub-Signature-256", &good_sig)
                ]
            )
            .await,
        400
    );
    assert_eq!(
        spine
            .post(
                &body,
                &[
                    ("X-GitHub-Event", "issues"),
                    ("X-Hub-Signature-256", &good_sig)
                ]
            )
            .await,
        400
    );
    // Signed, but not JSON: 400.
    let text = b"hello".to_vec();
    let text_headers = [
        ("X-GitHub-Event", "issues"),
        ("X-GitHub-Delivery", "e"),
        ("X-Hub-Signature-256", &sign(common::SECRET, &text)),
    ];
    assert_eq!(spine.post(&text, &text_headers).await, 400);
    // Above GitHub's 25 MB maximum: 413, answered unread (tests/ingest.rs sends the headers alone), and the
    // connection closed: a client still writing the body may see the close before the answer.
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    let huge_headers = [
        ("X-GitHub-Event", "issues"),
        ("X-GitHub-Delivery", "f"),
        ("X-Hub-Signature-256", &sign(common::SECRET, &huge)),
    ];
    match spine.try_post(&huge, &huge_headers).await {
        Ok(status) => assert_eq!(status, 413),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }

    assert_eq!(spine.store().await.delivery_count().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(spine.jobs().await.is_empty());
    // Only GET /user, which learns the token's login at start.
    assert!(spine.github.calls().iter().all(|c| c == "GET /user"));
}

#[tokio::test]
async fn a_repeated_delivery_makes_one_job_and_one_comment() {
    let mut spine = Spine::new(Auth::Token, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "same-guid", &body).await, 202);
    assert_eq!(spine.deliver("issues", "same-guid", &body).await, 200);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded);
    assert_eq!(
        spine.deliver("issues", "same-guid", &body).await,
        200,
        "still a duplicate after the job ran"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(spine.jobs().await.len(), 1);
    assert_eq!(spine.github.comments().len(), 1);
    assert_eq!(spine.store().await.delivery_count().await.unwrap(), 1);
}

#[tokio::test]
async fn an_event_no_trigger_uses_is_stored_and_acknowledged() {
    let mut spine = Spine::new(Auth::Token, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    let ping = common::fixture("webhooks/ping/default.json");
    assert_eq!(spine.deliver("ping", "p-1", &ping).await, 202);
    let closed = spine.payload("issues/reopened.json");
    assert_eq!(spine.deliver("issues", "i-reopened", &closed).await, 202);
    assert_eq!(spine.store().await.delivery_count().await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(spine.jobs().await.is_empty());
    // Only GET /user, which learns the token's login at start.
    assert!(spine.github.calls().iter().all(|c| c == "GET /user"));
}

#[tokio::test]
async fn a_job_interrupted_by_a_crash_completes_after_restart_with_one_comment() {
    let waiting = (
        "triage.yml",
        "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[waiting]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "crash-1", "issues/opened.json")
        .await;

    // The agent is running: kill the service outright, mid-job.
    let started = spine.gate.join("started-1");
    for _ in 0..300 {
        if started.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.exists(), "the agent never started");
    spine.kill();
    std::fs::write(spine.gate.join("release"), "").unwrap();
    // Only the progress comment is there.
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].body.contains("Working on it"),
        "{}",
        comments[0].body
    );

    // After a restart the job's lease runs out and it runs again, to completion.
    spine.start().await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 2);
    assert!(spine.gate.join("started-2").exists());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].body.starts_with("finished after the release"));
    assert!(comments[0].edits[0].before.contains("Working on it"));
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_retried_job_finds_the_comment_it_already_posted() {
    // A crash between posting the comment and recording it: the store says the post was under way
    // (`pending`), GitHub has the comment; the retry finds its marker, in nightshift's own comments, and
    // posts nothing new (it brings the comment up to date).
    let waiting = (
        "triage.yml",
        "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: hi\nprogress: false\n",
    );
    let mut spine = Spine::new(Auth::Token, &[waiting]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "crash-2", "issues/opened.json")
        .await;
    while !spine.gate.join("started-1").exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spine.kill();
    let job = spine.jobs().await[0].id;
    use nightshift::store::Store;
    spine
        .store()
        .await
        .record_output(
            job,
            &nightshift::store::Output {
                kind: "comment".into(),
                key: "comment".into(),
                url: None,
                github_id: None,
                pending: true,
            },
        )
        .await
        .unwrap();
    let own = spine.github.own_login();
    spine.github.add_comment_by(
        "Codertocat/Hello-World",
        1,
        &own,
        &format!("posted before the crash\n<!-- nightshift:job:{job} -->"),
    );
    // A stranger's comment carrying the marker is not taken for it.
    spine.github.add_comment_by(
        "Codertocat/Hello-World",
        1,
        "mallory",
        &format!("pasted\n<!-- nightshift:job:{job} -->"),
    );
    std::fs::write(spine.gate.join("release"), "").unwrap();
    spine.start().await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 2, "{comments:#?}");
    let ours = comments.iter().find(|c| c.author == own).unwrap();
    assert!(
        ours.body.starts_with("finished after the release"),
        "{}",
        ours.body
    );
    assert_eq!(
        ours.edits[0].before.lines().next(),
        Some("posted before the crash")
    );
    let theirs = comments.iter().find(|c| c.author == "mallory").unwrap();
    assert!(
        theirs.edits.is_empty(),
        "a stranger's comment is never edited"
    );
    assert!(
        spine
            .github
            .calls()
            .iter()
            .any(|c| c.starts_with("GET /repos/Codertocat/Hello-World/issues/1/comments"))
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn agents_never_see_the_services_secrets() {
    let dump = (
        "env.yml",
        "on:\n  issues:\n    types: [opened]\nagent: env\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[dump]).await;
    spine
        .start_with_env(&[
            ("NIGHTSHIFT_GITHUB_TOKEN", common::TOKEN),
            ("SOME_SERVICE_PASSWORD", "hunter2"),
        ])
        .await;
    spine
        .deliver_example("issues", "env-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let env = &spine.github.comments()[0].body;
    for secret in [common::TOKEN, common::SECRET, "hunter2", "PRIVATE KEY"] {
        assert!(!env.contains(secret), "the agent saw {secret:?}:\n{env}");
    }
    assert!(
        env.contains("NIGHTSHIFT_REPO=Codertocat/Hello-World"),
        "{env}"
    );
    assert!(env.contains("NIGHTSHIFT_EVENT=issues"), "{env}");
}

#[tokio::test]
async fn a_prompt_that_fails_to_render_is_a_failed_job_with_the_reason() {
    // `check` proves the prompt against real payloads; a delivery can still lack a field it names.
    let title = (
        "title.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: \"{{ event.issue.title }}\"\n",
    );
    let mut spine = Spine::new(Auth::Token, &[title]).await;
    spine.start().await;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    payload["issue"].as_object_mut().unwrap().remove("title");
    assert_eq!(
        spine
            .deliver("issues", "t-1", &serde_json::to_vec(&payload).unwrap())
            .await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    let error = jobs[0].error.as_deref().unwrap();
    assert!(
        error.contains("the prompt of trigger `title` did not render"),
        "{error}"
    );
    assert!(error.contains("undefined"), "{error}");
    // Only GET /user, which learns the token's login at start.
    assert!(spine.github.calls().iter().all(|c| c == "GET /user"));
}

#[tokio::test]
async fn each_job_mints_its_own_scoped_token_and_the_installation_token_is_reused() {
    let mut spine = Spine::new(Auth::App, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "tok-1", &body).await, 202);
    assert_eq!(spine.deliver("issues", "tok-2", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:?}"
    );
    assert_eq!(spine.github.comments().len(), 2);
    let (scoped, wide): (Vec<_>, Vec<_>) = spine
        .github
        .mints()
        .into_iter()
        .partition(|m| m.body.get("repositories").is_some());
    assert_eq!(scoped.len(), 2, "one token per job");
    assert!(
        wide.len() <= 1,
        "the installation-wide token (the dispatcher's reads) was reused: {wide:?}"
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_pull_request_job_works_on_the_pull_requests_head_and_respects_branch_filters() {
    let review = (
        "review.yml",
        "on:\n  pull_request:\n    branches: [main]\nagent: head\nprompt: review\noutput: comment\n",
    );
    let mut spine = Spine::new(Auth::Token, &[review]).await;
    // The pull request's head: a commit on a feature branch of the remote.
    let head = spine.commit(
        "main",
        "feature",
        "README.md",
        "# Hello-World\nfrom the feature branch\n",
    );
    spine.start().await;

    let payload = |base: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&spine.payload("pull_request/opened.json")).unwrap();
        v["pull_request"]["head"]["sha"] = head.clone().into();
        v["pull_request"]["base"]["ref"] = base.into();
        serde_json::to_vec(&v).unwrap()
    };
    assert_eq!(
        spine
            .deliver("pull_request", "pr-dev", &payload("dev"))
            .await,
        202
    );
    assert_eq!(
        spine
            .deliver("pull_request", "pr-main", &payload("main"))
            .await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(
        jobs[0].delivery_id.0, "pr-main",
        "a pull request into dev does not match branches [main]"
    );
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].number, 2);
    assert!(
        comments[0].body.starts_with(&format!(
            "HEAD {head}\n# Hello-World\nfrom the feature branch\n"
        )),
        "{}",
        comments[0].body
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_transient_github_failure_is_retried_and_a_permanent_one_fails_the_job() {
    let mut spine = Spine::new(Auth::Token, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    spine.github.fail_next("issues/create-comment", &[502]);
    spine
        .deliver_example("issues", "flaky", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(spine.github.comments().len(), 1);

    // GitHub refuses the result (the progress comment's edit): the job fails at once, and says so.
    spine.github.fail_next("issues/update-comment", &[422]);
    spine
        .deliver_example("issues", "gone", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert_eq!(jobs[1].state, JobState::Failed);
    assert_eq!(jobs[1].retries, 0, "a refusal is not waited on");
    let error = jobs[1].error.as_deref().unwrap();
    assert!(
        error.contains("editing the job's comment: GitHub answered 422"),
        "{error}"
    );
    // The failure is said on the issue, in the job's comment (the fake fails only the one call).
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 2);
    assert!(
        comments[1]
            .body
            .starts_with("This job failed: GitHub refused it:")
            && !comments[1].body.contains("422"),
        "{}",
        comments[1].body
    );
}

#[tokio::test]
async fn the_apps_own_comments_never_set_off_its_triggers() {
    let on_comment = (
        "answer.yml",
        "on:\n  issue_comment:\n    types: [created]\nagent: reply\nprompt: answer\n",
    );
    let mut spine = Spine::new(Auth::App, &[on_comment]).await;
    spine.start().await;
    let log = spine.server.as_ref().unwrap().log();
    assert!(
        log.contains("bot=nightshift-test[bot]"),
        "the App's login was learned: {log}"
    );
    let mut by_bot: serde_json::Value =
        serde_json::from_slice(&spine.payload("issue_comment/created.json")).unwrap();
    by_bot["sender"]["login"] = "nightshift-test[bot]".into();
    by_bot["sender"]["type"] = "Bot".into();
    assert_eq!(
        spine
            .deliver(
                "issue_comment",
                "by-bot",
                &serde_json::to_vec(&by_bot).unwrap()
            )
            .await,
        202
    );
    assert_eq!(
        spine
            .deliver(
                "issue_comment",
                "by-human",
                &spine.payload("issue_comment/created.json")
            )
            .await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].delivery_id.0, "by-human");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(spine.jobs().await.len(), 1);
    // The answer nightshift posted would come back as an issue_comment event, and not fire either.
    let mut echo: serde_json::Value =
        serde_json::from_slice(&spine.payload("issue_comment/created.json")).unwrap();
    echo["comment"]["body"] = spine.github.comments()[0].body.clone().into();
    // As GitHub sends it: by the App's bot (its marker alone, which anyone can paste, does not count).
    echo["sender"]["login"] = "nightshift-test[bot]".into();
    echo["sender"]["type"] = "Bot".into();
    echo["comment"]["user"] = echo["sender"].clone();
    assert_eq!(
        spine
            .deliver("issue_comment", "echo", &serde_json::to_vec(&echo).unwrap())
            .await,
        202
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(spine.jobs().await.len(), 1);
    spine.assert_no_unexpected_calls();
}

/// A git server that answers nothing until the test releases it, then 404 to everything.
struct HeldGitServer {
    url: String,
    asked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HeldGitServer {
    async fn start() -> HeldGitServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let asked = std::sync::Arc::new(AtomicBool::new(false));
        let (release, released) = tokio::sync::watch::channel(false);
        let seen = asked.clone();
        let app = axum::Router::new().fallback(move || {
            let seen = seen.clone();
            let mut released = released.clone();
            async move {
                seen.store(true, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                axum::http::StatusCode::NOT_FOUND
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HeldGitServer {
            url: format!("http://{addr}/octo/held.git"),
            asked,
            release,
        }
    }

    fn asked(&self) -> bool {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_repository_slow_to_read_never_holds_up_another_repositorys_events() {
    let held = HeldGitServer::start().await;
    let mut spine = Spine::new(Auth::Token, &[ISSUE_OPENED_COMMENT]).await;
    // The held repository cannot be cloned once it answers: its job fails after one wait.
    let config = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(
        &spine.config,
        config.replacen("retry:\n", "retry:\n  max: 1\n", 1),
    )
    .unwrap();
    spine.start().await;

    // Repository A's own triggers must be read first, from a server that does not answer (as a first clone
    // of a huge repository would take minutes).
    let mut slow: serde_json::Value =
        serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    slow["repository"]["full_name"] = "octo/held".into();
    slow["repository"]["name"] = "held".into();
    slow["repository"]["clone_url"] = held.url.clone().into();
    let slow = serde_json::to_vec(&slow).unwrap();
    assert_eq!(spine.deliver("issues", "slow-1", &slow).await, 202);
    for _ in 0..200 {
        if held.asked() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        held.asked(),
        "reading repository A's triggers never started"
    );

    // Repository B's event, delivered after, is matched and its job done while A's read still hangs.
    let quick = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "quick-1", &quick).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].repo, "Codertocat/Hello-World");
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(spine.github.comments().len(), 1);
    assert!(
        spine.jobs().await.iter().all(|j| j.repo != "octo/held"),
        "A is still being read"
    );

    // Once A's server answers (404), A is matched against the service's triggers alone, in its turn.
    held.release.send(true).unwrap();
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert_eq!(jobs[1].repo, "octo/held");
}
