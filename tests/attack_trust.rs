//! Attacks on who can set nightshift off, each against the real service with the strict fake GitHub: events
//! without an author association, fork pull requests, bots playing ping-pong, a pasted marker, and a
//! repository trigger whose template loops. Each test performs the attack, waits until the service has
//! matched the delivery (no sleeping), asserts it was contained, and that the service still answers.

mod common;

use std::time::Duration;

use common::fake_github::TOKEN_LOGIN;
use common::{Auth, Spine};
use serde_json::{Value, json};
use sqlx::sqlite::SqlitePool;

const REPO: &str = "Codertocat/Hello-World";

/// The service's store, read directly (job specs and whether deliveries were matched).
async fn db(spine: &Spine) -> SqlitePool {
    let url = format!(
        "sqlite://{}/state/nightshift.db",
        spine.dir.path().display()
    );
    SqlitePool::connect(&url).await.unwrap()
}

/// Delivers `payload` as `event` and waits until the service has matched it against the triggers.
async fn deliver_and_match(spine: &Spine, event: &str, delivery: &str, payload: &Value) {
    let status = spine
        .deliver(event, delivery, &serde_json::to_vec(payload).unwrap())
        .await;
    assert_eq!(status, 202, "delivering {delivery}");
    let pool = db(spine).await;
    for _ in 0..600 {
        let matched: Option<Option<i64>> =
            sqlx::query_scalar("SELECT matched_at FROM deliveries WHERE delivery_id = ?")
                .bind(delivery)
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(Some(_)) = matched {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("delivery {delivery} was never matched");
}

/// The frozen specs of every job, oldest first, as (trigger, spec).
async fn specs(spine: &Spine) -> Vec<(String, Value)> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT trigger_name, spec FROM jobs ORDER BY id")
            .fetch_all(&db(spine).await)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(t, s)| (t, serde_json::from_str(&s).unwrap()))
        .collect()
}

async fn healthz(spine: &Spine) {
    let answer = reqwest::get(format!("{}/healthz", spine.url()))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the service still answers");
}

/// A started service with one trigger of its own (on opened issues) and `files` among the repository's own
/// triggers (`.nightshift/triggers/NAME`).
async fn with_repository_triggers(files: &[(&str, &str)]) -> Spine {
    let service = "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: service trigger\n";
    let mut spine = Spine::new(Auth::Token, &[("service.yml", service)]).await;
    for (name, text) in files {
        spine.commit(
            "main",
            "main",
            &format!(".nightshift/triggers/{name}"),
            text,
        );
    }
    spine.start().await;
    spine
}

/// Delivers the sample opened issue as `delivery` and waits until it is matched.
async fn deliver_calm(spine: &Spine, delivery: &str) {
    deliver_and_match(
        spine,
        "issues",
        delivery,
        &payload(spine, "issues/opened.json"),
    )
    .await;
}

/// Asserts the service's log names `file` and says `why` (a repository trigger file's problem).
fn assert_logged(spine: &Spine, file: &str, why: &str) {
    let log = spine.server.as_ref().unwrap().log();
    assert!(
        log.contains(file) && log.contains(why),
        "{file} and {why:?} are logged: {log}"
    );
}

fn payload(spine: &Spine, path: &str) -> Value {
    serde_json::from_slice(&spine.payload(path)).unwrap()
}

fn user(login: &str, kind: &str) -> Value {
    json!({ "login": login, "id": 9000, "type": kind })
}

fn permission_lookups(spine: &Spine, login: &str) -> usize {
    let route = format!("GET /repos/{REPO}/collaborators/{login}/permission");
    spine
        .github
        .calls()
        .iter()
        .filter(|c| c.starts_with(&route))
        .count()
}

#[tokio::test]
async fn events_without_an_association_fire_only_for_people_with_write_access() {
    let closed = "on:\n  issues:\n    types: [closed]\nagent: reply\nprompt: closed\n";
    let checks =
        "on:\n  check_run:\n    types: [completed]\nforks: allow\nagent: reply\nprompt: ci\n";
    let mut spine = Spine::new(
        Auth::Token,
        &[("closed.yml", closed), ("checks.yml", checks)],
    )
    .await;
    spine.github.set_permission(REPO, "mallory", "read");
    spine.github.set_permission(REPO, "maintainer", "write");
    spine.start().await;

    // The author of an issue can close it; the payload's association is the one from when it was opened.
    let mut p = payload(&spine, "issues/opened.json");
    p["action"] = "closed".into();
    p["issue"]["user"] = user("mallory", "User");
    p["issue"]["author_association"] = "OWNER".into();
    p["sender"] = user("mallory", "User");
    deliver_and_match(&spine, "issues", "close-1", &p).await;
    // A fork's author causes the check run of their pull request.
    let mut run = payload(&spine, "check_run/completed.json");
    run["sender"] = user("mallory", "User");
    deliver_and_match(&spine, "check_run", "run-1", &run).await;
    assert!(specs(&spine).await.is_empty(), "mallory set nothing off");
    assert_eq!(
        permission_lookups(&spine, "mallory"),
        1,
        "looked up once, then cached"
    );

    // The same events from someone GitHub says can write do fire.
    p["sender"] = user("maintainer", "User");
    deliver_and_match(&spine, "issues", "close-2", &p).await;
    run["sender"] = user("maintainer", "User");
    deliver_and_match(&spine, "check_run", "run-2", &run).await;
    let fired: Vec<String> = specs(&spine).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(fired, ["closed", "checks"]);
    assert_eq!(permission_lookups(&spine, "maintainer"), 1);

    // When GitHub cannot answer, the actor is not trusted (and asked again next time).
    spine
        .github
        .fail_next("repos/get-collaborator-permission-level", &[403]);
    run["sender"] = user("someone-else", "User");
    deliver_and_match(&spine, "check_run", "run-3", &run).await;
    assert_eq!(specs(&spine).await.len(), 2);
    healthz(&spine).await;
    spine.wait_for_finished_jobs(2).await;
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_fork_pull_request_is_never_pushed_and_runs_read_only() {
    let write =
        "on: pull_request\nfrom: anyone\nagent: edit\nprompt: fix it\noutput: pull_request\n";
    let review = "on: pull_request\nfrom: anyone\nagent: reply\nprompt: review it\n";
    let mut spine = Spine::new(Auth::Token, &[("write.yml", write), ("review.yml", review)]).await;
    spine.start().await;
    let mut pr = payload(&spine, "pull_request/opened.json");
    pr["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
    pr["pull_request"]["head"]["repo"]["id"] = 666.into();
    pr["pull_request"]["user"] = user("mallory", "User");
    pr["pull_request"]["author_association"] = "NONE".into();
    pr["sender"] = user("mallory", "User");
    deliver_and_match(&spine, "pull_request", "fork-1", &pr).await;
    let jobs = specs(&spine).await;
    assert_eq!(jobs.len(), 1, "only the comment trigger fires: {jobs:?}");
    assert_eq!(jobs[0].0, "review");
    assert_eq!(
        jobs[0].1["read_only"], true,
        "a fork's code is worked on read-only"
    );
    spine.wait_for_finished_jobs(1).await;
    assert!(
        spine.github.pulls().is_empty(),
        "nothing was pushed or opened"
    );
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn bots_cannot_play_ping_pong_with_nightshift() {
    let answer =
        "on:\n  issue_comment:\n    types: [created]\nfrom: anyone\nagent: reply\nprompt: answer\n";
    let mut spine = Spine::new(Auth::Token, &[("answer.yml", answer)]).await;
    spine.start().await;
    // Another agent's bot comments.
    let mut c = payload(&spine, "issue_comment/created.json");
    c["comment"]["user"] = user("other-agent[bot]", "Bot");
    c["sender"] = user("other-agent[bot]", "Bot");
    deliver_and_match(&spine, "issue_comment", "bot-1", &c).await;
    // A bot that does not say it is one by type, only by its login.
    c["comment"]["user"] = user("sneaky[bot]", "User");
    c["sender"] = user("sneaky[bot]", "User");
    deliver_and_match(&spine, "issue_comment", "bot-2", &c).await;
    assert!(specs(&spine).await.is_empty());

    // A person comments; nightshift answers; GitHub sends nightshift's own comment back (token mode: the
    // token's user, learned through GET /user at start).
    let mut human = payload(&spine, "issue_comment/created.json");
    human["comment"]["body"] = "what does this do?".into();
    deliver_and_match(&spine, "issue_comment", "human-1", &human).await;
    spine.wait_for_finished_jobs(1).await;
    let posted = spine.wait_for_comments(1).await;
    let mut echo = payload(&spine, "issue_comment/created.json");
    echo["comment"]["body"] = posted[0].body.clone().into();
    echo["comment"]["user"] = user(TOKEN_LOGIN, "User");
    echo["comment"]["author_association"] = "OWNER".into();
    echo["sender"] = user(TOKEN_LOGIN, "User");
    deliver_and_match(&spine, "issue_comment", "echo-1", &echo).await;
    // And the issue nightshift opens (an issue output) comes back as `issues.opened`.
    let mut opened = payload(&spine, "issues/opened.json");
    opened["issue"]["user"] = user(TOKEN_LOGIN, "User");
    opened["sender"] = user(TOKEN_LOGIN, "User");
    deliver_and_match(&spine, "issues", "own-issue", &opened).await;
    assert_eq!(specs(&spine).await.len(), 1, "no ping-pong");
    assert!(
        spine.github.calls().iter().any(|c| c == "GET /user"),
        "the token's login was learned"
    );
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_pasted_marker_neither_silences_triggers_nor_passes_for_nightshift() {
    let answer = "on:\n  issue_comment:\n    types: [created]\nagent: reply\nprompt: answer\n";
    let mut spine = Spine::new(Auth::Token, &[("answer.yml", answer)]).await;
    spine.start().await;
    // An owner's comment quoting nightshift's marker still fires the trigger...
    let mut c = payload(&spine, "issue_comment/created.json");
    c["comment"]["body"] = "as the bot said:\n<!-- nightshift:job:1 -->".into();
    deliver_and_match(&spine, "issue_comment", "paste-1", &c).await;
    // ...and a stranger's comment with the marker is not taken for nightshift's (or trusted).
    c["comment"]["user"] = user("mallory", "User");
    c["comment"]["author_association"] = "NONE".into();
    c["sender"] = user("mallory", "User");
    deliver_and_match(&spine, "issue_comment", "paste-2", &c).await;
    let jobs = specs(&spine).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    spine.wait_for_finished_jobs(1).await;
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_repository_trigger_whose_template_loops_is_refused_and_the_service_stays_responsive() {
    // Loops on every payload: refused when the repository's triggers are read.
    let always = "on: issues\nagent: reply\nprompt: \"{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}\"\n";
    // Loops only on the payload it waits for: fails that event's job with a clear error.
    let lurking = "on: issues\nagent: reply\nprompt: \"{% if event.issue.title == 'boom' %}{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}{% endif %}ok\"\n";
    let mut spine =
        with_repository_triggers(&[("always.yml", always), ("lurking.yml", lurking)]).await;

    let mut boom = payload(&spine, "issues/opened.json");
    boom["issue"]["title"] = "boom".into();
    deliver_and_match(&spine, "issues", "boom-1", &boom).await;
    healthz(&spine).await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    let mut triggers: Vec<&str> = jobs.iter().map(|j| j.trigger.as_str()).collect();
    triggers.sort();
    assert_eq!(
        triggers,
        ["Hello-World.lurking", "service"],
        "the looping one never loaded"
    );
    let lurking = jobs
        .iter()
        .find(|j| j.trigger == "Hello-World.lurking")
        .unwrap();
    let error = lurking.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("the prompt of trigger `Hello-World.lurking` did not render")
            && error.contains("fuel"),
        "{error}"
    );
    assert_logged(&spine, "always.yml", "fuel");

    // Other events are matched meanwhile, and the service answers.
    let calm = payload(&spine, "issues/opened.json");
    deliver_and_match(&spine, "issues", "calm-1", &calm).await;
    let jobs = spine.wait_for_finished_jobs(4).await;
    assert_eq!(jobs.iter().filter(|j| j.trigger == "service").count(), 2);
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

/// A template whose work minijinja does not charge for what it costs (docs/security-adv4.md): each pass of the
/// loop copies a large field of the payload twice and compares the copies, for a few units of fuel. Against
/// a payload of megabytes that is minutes of CPU. A repository's templates render in a helper process with
/// a CPU limit (src/trigger/isolate.rs): the kernel stops the helper after two seconds, that one job fails
/// saying so, and the same trigger renders the next (small) event as usual, in a new helper.
#[tokio::test]
async fn a_repository_template_that_burns_cpu_is_stopped_by_the_kernel_and_the_next_event_renders()
{
    let burn = "on: issues\nagent: reply\nprompt: \"{% for i in range(8000) %}{% if event.issue.body == event.issue.body %}{% endif %}{% endfor %}rendered {{ event.issue.title }}\"\n";
    let mut spine = with_repository_triggers(&[("burn.yml", burn)]).await;

    let mut heavy = payload(&spine, "issues/opened.json");
    heavy["issue"]["title"] = "heavy".into();
    heavy["issue"]["body"] = "x".repeat(8 << 20).into();
    deliver_and_match(&spine, "issues", "heavy-1", &heavy).await;
    healthz(&spine).await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    let burned = jobs
        .iter()
        .find(|j| j.trigger == "Hello-World.burn")
        .expect("the burning trigger's job is recorded");
    let error = burned.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("the prompt of trigger `Hello-World.burn` did not render")
            && error.contains("more than 2s of CPU"),
        "{error}"
    );
    assert!(
        jobs.iter()
            .any(|j| j.trigger == "service" && j.error.is_none())
    );

    // The same trigger on an ordinary event: rendered, in a new helper.
    deliver_calm(&spine, "calm-1").await;
    spine.wait_for_finished_jobs(4).await;
    let title = payload(&spine, "issues/opened.json")["issue"]["title"]
        .as_str()
        .unwrap()
        .to_owned();
    let rendered = specs(&spine)
        .await
        .into_iter()
        .filter(|(t, _)| t == "Hello-World.burn")
        .filter_map(|(_, spec)| spec["prompt"].as_str().map(str::to_owned))
        .collect::<Vec<_>>();
    assert!(
        rendered
            .iter()
            .any(|p| p.contains("rendered") && p.contains(&title)),
        "{rendered:?}"
    );
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

/// The same class of template, caught when the repository's triggers are read: each pass compares two copies
/// of the whole payload, sorted, for a few units of fuel. Checked against GitHub's sample payloads of every
/// `issues` action, in this thread, it took over 30 seconds of CPU (a debug build). The check runs in a
/// helper too, and all of a file's sample renders share one CPU budget: the file is refused with why.
#[tokio::test]
async fn a_repository_trigger_file_whose_check_burns_cpu_is_refused_within_one_budget() {
    let burn = "on: issues\nagent: reply\nprompt: \"{% for i in range(1500) %}{% if event|dictsort == event|dictsort %}{% endif %}{% endfor %}ok\"\n";
    let mut spine = with_repository_triggers(&[("burn.yml", burn)]).await;
    deliver_calm(&spine, "calm-1").await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].trigger, "service", "the burning file never loaded");
    assert_logged(&spine, "burn.yml", "more than 2s of CPU");
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

/// Many files, each under the budget on its own (found by a reviewer of the helper): checked each on a budget
/// of its own, eight files of about a second and a half each took twelve seconds of CPU per read, and a
/// repository can hold hundreds. All of a repository's files are checked on one budget: the first files load,
/// the rest are refused saying why, and the service's own trigger runs.
#[tokio::test]
async fn a_repositorys_trigger_files_are_checked_on_one_cpu_budget_between_them() {
    let slow = "on: issues\nagent: reply\nprompt: \"{% for i in range(90) %}{% if event|dictsort == event|dictsort %}{% endif %}{% endfor %}ok\"\n";
    let names: Vec<String> = (0..8).map(|i| format!("slow{i}.yml")).collect();
    let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), slow)).collect();
    let mut spine = with_repository_triggers(&files).await;
    deliver_calm(&spine, "calm-1").await;
    let log = spine.server.as_ref().unwrap().log();
    let refused = (0..8)
        .filter(|i| {
            log.lines().any(|l| {
                l.contains(&format!("slow{i}.yml"))
                    && l.contains("more than 2s of CPU between them")
            })
        })
        .count();
    assert!(refused >= 1, "{log}");
    let loaded = log
        .lines()
        .find(|l| l.contains("repository triggers read"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        !loaded.contains("triggers=8"),
        "every file loaded, so each had a budget of its own: {loaded}"
    );
    let jobs = spine.wait_for_finished_jobs(9 - refused).await;
    assert!(
        jobs.iter()
            .any(|j| j.trigger == "service" && j.error.is_none())
    );
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

/// A read of a repository's triggers that fails (its fetch failed, or no template renderer could be had,
/// which an attacker holding the renderers busy could arrange) does not leave the set read before in force
/// until the next push: a pusher's fix to a trigger (a stricter `if:`) would silently not apply. The next
/// event reads again.
#[tokio::test]
async fn after_a_failed_read_of_a_repositorys_triggers_the_next_event_reads_them_again() {
    let first = "on: issues\nagent: reply\nprompt: first version\n";
    let mut spine = with_repository_triggers(&[("t.yml", first)]).await;
    deliver_calm(&spine, "calm-1").await;
    spine.wait_for_finished_jobs(2).await;

    // The fix lands, and its push is delivered while the repository cannot be read.
    spine.commit(
        "main",
        "main",
        ".nightshift/triggers/t.yml",
        "on: issues\nagent: reply\nprompt: second version\n",
    );
    let away = spine.remote.with_extension("away");
    std::fs::rename(&spine.remote, &away).unwrap();
    let mut push = payload(&spine, "push/default.json");
    push["ref"] = "refs/heads/main".into();
    deliver_and_match(&spine, "push", "push-1", &push).await;
    std::fs::rename(&away, &spine.remote).unwrap();
    let log = spine.server.as_ref().unwrap().log();
    assert!(
        log.contains("the repository's own triggers could not be read"),
        "{log}"
    );

    deliver_calm(&spine, "calm-2").await;
    spine.wait_for_finished_jobs(4).await;
    let prompts: Vec<String> = specs(&spine)
        .await
        .into_iter()
        .filter(|(t, _)| t == "Hello-World.t")
        .filter_map(|(_, spec)| spec["prompt"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert!(prompts[0].contains("first version"), "{prompts:?}");
    assert!(
        prompts[1].contains("second version"),
        "the failed read left the old trigger in force: {prompts:?}"
    );
    spine.assert_no_unexpected_calls();
}

/// Two templates the construct check let through (docs/security-adv4.md): a list doubled with `+` (minijinja
/// joins lists lazily, for free, then copies thirty-three levels at once: billions of items) and a namespace
/// put inside itself (printing it recursed until the stack overflowed and aborted the service). Both wait
/// for the event that sets them off; both are refused when the repository's triggers are read.
#[tokio::test]
async fn a_repository_trigger_that_doubles_a_list_or_nests_a_namespace_in_itself_is_refused() {
    let double = "on: issues\nagent: reply\nprompt: \"{% if event.issue.title == 'boom' %}{% set n = namespace() %}{% set n.a = ['x'] %}{% for i in range(34) %}{% set n.a = n.a + n.a %}{% endfor %}{{ n.a }}{% endif %}ok\"\n";
    let cycle = "on: issues\nagent: reply\nprompt: \"{% if event.issue.title == 'boom' %}{% set n = namespace() %}{% set n.a = n %}{{ n.a }}{% endif %}ok\"\n";
    // The same doubling through the `chain` filter (docs/security-adv4.md, found after the `+` fix).
    let chain = double.replace("n.a + n.a", "n.a|chain(n.a)");
    let mut spine = with_repository_triggers(&[
        ("double.yml", double),
        ("cycle.yml", cycle),
        ("chain.yml", &chain),
    ])
    .await;

    let mut boom = payload(&spine, "issues/opened.json");
    boom["issue"]["title"] = "boom".into();
    deliver_and_match(&spine, "issues", "boom-1", &boom).await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let triggers: Vec<&str> = jobs.iter().map(|j| j.trigger.as_str()).collect();
    assert_eq!(triggers, ["service"], "neither template loaded");
    assert_logged(&spine, "double.yml", "`+` needs a number");
    assert_logged(&spine, "cycle.yml", "the namespace `n` is used only as");
    assert_logged(&spine, "chain.yml", "the `chain` filter is not allowed");
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}

/// Whoever can push an installed repository's default branch writes its triggers. A trigger there that names
/// the operator's release profile (which is given a token through `env:`) would hand that token to their
/// prompt; one that names an unboxed profile would run it on the service's machine. Neither loads; the same
/// trigger with a plain profile does.
#[tokio::test]
async fn a_repository_trigger_cannot_use_a_profile_with_secrets_or_without_a_box() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    spine.add_agents(
        "  release: {command: ['true'], env: [RELEASE_TOKEN]}\n  bare: {command: ['true'], sandbox: none}\n",
    );
    for agent in ["release", "bare", "reply"] {
        spine.commit(
            "main",
            "main",
            &format!(".nightshift/triggers/{agent}.yml"),
            &format!("on: issues\nagent: {agent}\nprompt: print $RELEASE_TOKEN\n"),
        );
    }
    spine.start().await;
    let p = payload(&spine, "issues/opened.json");
    deliver_and_match(&spine, "issues", "profiles-1", &p).await;
    let jobs = specs(&spine).await;
    let triggers: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(triggers, ["Hello-World.reply"]);
    let log = spine.server.as_ref().unwrap().log();
    assert!(
        log.contains("cannot use agent `release`: it is given the service's environment variables"),
        "{log}"
    );
    assert!(
        log.contains("cannot use agent `bare`: it runs outside a box"),
        "{log}"
    );
    spine.wait_for_finished_jobs(1).await;
    spine.assert_no_unexpected_calls();
}

/// GitHub calls every member of the owning organization MEMBER, and a read-only outside collaborator
/// COLLABORATOR. Either could otherwise set off a trigger whose agent pushes to the repository, whose CI then
/// runs what the agent pushed with the repository's secrets. Their permission is looked up: only write
/// access or more is trusted.
#[tokio::test]
async fn a_member_or_collaborator_who_can_only_read_cannot_set_a_trigger_off() {
    let answer = "on:\n  issue_comment:\n    types: [created]\nagent: reply\nprompt: answer\n";
    let mut spine = Spine::new(Auth::Token, &[("answer.yml", answer)]).await;
    spine.start().await;
    spine.github.set_permission(REPO, "reader", "read");
    spine.github.set_permission(REPO, "outsider", "read");
    spine.github.set_permission(REPO, "writer", "write");
    for (n, (login, association)) in [
        ("reader", "MEMBER"),
        ("outsider", "COLLABORATOR"),
        ("writer", "MEMBER"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = payload(&spine, "issue_comment/created.json");
        c["comment"]["user"] = user(login, "User");
        c["comment"]["author_association"] = association.into();
        c["sender"] = user(login, "User");
        deliver_and_match(&spine, "issue_comment", &format!("member-{n}"), &c).await;
        assert_eq!(
            permission_lookups(&spine, login),
            1,
            "{login} was looked up"
        );
    }
    let jobs = specs(&spine).await;
    assert_eq!(jobs.len(), 1, "only the writer's comment: {jobs:?}");
    let (delivery,): (String,) = sqlx::query_as(
        "SELECT d.delivery_id FROM jobs j JOIN deliveries d ON d.id = j.delivery_id",
    )
    .fetch_one(&db(&spine).await)
    .await
    .unwrap();
    assert_eq!(delivery, "member-2");
    spine.wait_for_finished_jobs(1).await;
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_repository_cannot_cancel_another_repositorys_jobs() {
    // The repository's own trigger names a group another repository's (or the service's) jobs use.
    let own = "on: issues\nagent: reply\nprompt: x\nconcurrency:\n  group: shared\n  cancel_in_progress: true\n";
    let mut spine = Spine::new(Auth::Token, &[]).await;
    spine.commit("main", "main", ".nightshift/triggers/own.yml", own);
    spine.start().await;
    let p = payload(&spine, "issues/opened.json");
    deliver_and_match(&spine, "issues", "group-1", &p).await;
    let jobs = specs(&spine).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].1["concurrency_group"], format!("{REPO}:shared"));
    spine.wait_for_finished_jobs(1).await;
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_fork_job_cannot_write_its_worktree_unless_its_trigger_allows_it() {
    // Two comment triggers on the same fork pull request: the default (read-only) and `forks: allow`.
    let read_only = "on: pull_request\nfrom: anyone\nagent: probe\nprompt: look\n";
    let allowed = "on: pull_request\nfrom: anyone\nforks: allow\nagent: probe\nprompt: look\n";
    let mut spine = Spine::new(
        Auth::Token,
        &[("readonly.yml", read_only), ("allowed.yml", allowed)],
    )
    .await;
    let probe = spine.dir.path().join("probe.sh");
    std::fs::write(
        &probe,
        "#!/bin/sh\ncat >/dev/null\n\
         if (echo changed > README.md) 2>/dev/null; then echo worktree-writable; else echo worktree-read-only; fi\n",
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    spine.add_agents(&format!(
        "  probe: {{command: [{}], timeout: 30s}}\n",
        probe.display()
    ));
    let head = spine.commit("main", "mallory-fix", "fix.txt", "from a fork\n");
    spine.start().await;
    let mut pr = payload(&spine, "pull_request/opened.json");
    pr["pull_request"]["head"]["sha"] = head.into();
    pr["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
    pr["pull_request"]["head"]["repo"]["id"] = 666.into();
    pr["pull_request"]["user"] = user("mallory", "User");
    pr["pull_request"]["author_association"] = "NONE".into();
    pr["sender"] = user("mallory", "User");
    deliver_and_match(&spine, "pull_request", "fork-rw", &pr).await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    for job in &jobs {
        assert_eq!(
            job.state,
            nightshift::store::JobState::Succeeded,
            "{}: {:?}",
            job.trigger,
            job.error
        );
    }
    let comments = spine.wait_for_comments(2).await;
    let said = |trigger: &str| {
        let job = jobs.iter().find(|j| j.trigger == trigger).unwrap();
        comments
            .iter()
            .find(|c| c.body.contains(&format!("job {}", job.id)))
            .map(|c| c.body.clone())
            .unwrap()
    };
    assert!(
        said("readonly").contains("worktree-read-only"),
        "{}",
        said("readonly")
    );
    assert!(
        said("allowed").contains("worktree-writable"),
        "{}",
        said("allowed")
    );
    healthz(&spine).await;
    spine.assert_no_unexpected_calls();
}
