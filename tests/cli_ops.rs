//! The commands for people on call, with the real binary against a running service: `nightshift
//! deliveries` (which triggers fired for a delivery, and the filter that stopped each other one),
//! `nightshift jobs --follow ID` (a running job's log as it is written, then its outcome as the exit status),
//! the filters of `nightshift jobs`, hostile text kept off the terminal, and a store that does not exist.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Auth, Spine};
use nightshift::store::{JobRecord, JobState, Store};

/// Runs `nightshift --config CONFIG ARGS...`.
fn nightshift(spine: &Spine, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("--config")
        .arg(&spine.config)
        .args(args)
        .env_remove("NIGHTSHIFT_STORE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Nothing that acts on a terminal: no escape, bell, carriage return or bidi override.
fn assert_terminal_safe(text: &str) {
    for c in text.chars() {
        assert!(
            !((c.is_control() && c != '\n') || ('\u{202A}'..='\u{202E}').contains(&c)),
            "{c:?} reached the terminal in:\n{text}"
        );
    }
}

async fn wait_for(
    store: &dyn Store,
    what: &str,
    done: impl Fn(&[JobRecord]) -> bool,
) -> Vec<JobRecord> {
    for _ in 0..600 {
        let jobs = store.jobs().await.unwrap();
        if done(&jobs) {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {:#?}", store.jobs().await.unwrap());
}

/// A delivery that fired one trigger and not another: `deliveries` lists it with the job it fired and the
/// filter that stopped the other (the label an attacker named, escaped), `deliveries ID` gives every
/// verdict in full and counts the triggers that do not listen to the event; filters and JSON.
#[tokio::test]
async fn a_delivery_shows_the_trigger_it_fired_and_the_filter_that_stopped_the_other() {
    let mut spine = Spine::new(
        Auth::Token,
        &[
            (
                "fires.yml",
                "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: hi\noutput: comment\n",
            ),
            (
                "stopped.yml",
                "on:\n  issues:\n    types: [opened]\n    labels: [wontfix]\nagent: reply\nprompt: hi\n",
            ),
            (
                "elsewhere.yml",
                "on:\n  push:\n    branches: [main]\nagent: reply\nprompt: hi\n",
            ),
        ],
    )
    .await;
    spine.start().await;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    payload["issue"]["labels"][0]["name"] = "\u{1b}]0;pwned\u{7}\u{202E}gib".into();
    let status = spine
        .deliver(
            "issues",
            "delivery-1",
            &serde_json::to_vec(&payload).unwrap(),
        )
        .await;
    assert_eq!(status, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].trigger, "fires");
    assert_eq!(jobs[0].state, JobState::Succeeded);

    let list = nightshift(&spine, &["deliveries"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let out = stdout(&list);
    assert_terminal_safe(&out);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    let row = lines.next().unwrap();
    assert!(header.starts_with("RECEIVED (UTC)"), "{out}");
    for (column, value) in [
        ("EVENT", "issues.opened"),
        ("REPOSITORY", "Codertocat/Hello-World"),
        ("DELIVERY", "delivery-1"),
        ("STATE", "matched"),
        ("FIRED", "fires #1"),
    ] {
        // Aligned: each value starts where its column's title does.
        assert_eq!(
            header.find(column),
            row.find(value),
            "{column} is not aligned:\n{out}"
        );
    }
    assert_eq!(
        lines.next().unwrap(),
        "    not fired: stopped: labels [\\u{1b}]0;pwned\\u{7}\\u{202e}gib] include none of [wontfix]",
        "{out}"
    );

    let one = nightshift(&spine, &["deliveries", "delivery-1"]);
    assert!(one.status.success(), "{}", stderr(&one));
    let out = stdout(&one);
    assert_terminal_safe(&out);
    assert!(out.contains("event:    issues.opened\n"), "{out}");
    assert!(
        out.contains("fired:    fires → job 1 (succeeded)\n"),
        "{out}"
    );
    assert!(
        out.contains("not fired: stopped: labels [\\u{1b}]0;pwned"),
        "{out}"
    );
    assert!(
        out.contains("1 other trigger(s) do not listen to `issues` events in this repository"),
        "{out}"
    );

    let json = nightshift(
        &spine,
        &["deliveries", "--json", "--event", "issues.opened"],
    );
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value[0]["delivery_id"], "delivery-1");
    assert_eq!(value[0]["jobs"][0]["trigger"], "fires");
    assert_eq!(value[0]["verdicts"]["skipped"][0]["trigger"], "stopped");
    assert_eq!(value[0]["verdicts"]["others"], 1);

    for filter in [
        &["deliveries", "--event", "push"][..],
        &["deliveries", "--event", "issues.closed"],
        &["deliveries", "--repo", "someone/else"],
    ] {
        let none = nightshift(&spine, filter);
        assert!(none.status.success());
        assert_eq!(stdout(&none), "", "{filter:?}");
        assert!(stderr(&none).contains("no deliveries"));
    }
    let by_repo = nightshift(&spine, &["deliveries", "--repo", "codertocat/hello-world"]);
    assert!(stdout(&by_repo).contains("delivery-1"));
    let unknown = nightshift(&spine, &["deliveries", "nope\u{1b}[2J"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_terminal_safe(&stderr(&unknown));
    assert!(stderr(&unknown).contains("there is no delivery nope\\u{1b}[2J"));
    spine.assert_no_unexpected_calls();
}

/// Reads a child's stdout line by line on a thread.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `jobs --follow ID` prints a running job's log lines as they are written (the job still runs when they
/// arrive), then exits with the job's outcome: 0 for the one that succeeded, 1 for the one that failed.
/// Then the filters of `jobs`, on the table and on the jobs it lists.
async fn following_a_running_job_prints_its_lines_and_exits_with_its_outcome(postgres: bool) {
    let mut spine = Spine::new(
        Auth::Token,
        &[
            (
                "talk.yml",
                "on:\n  issues:\n    types: [opened]\nagent: talk\nprompt: hi\noutput: comment\n",
            ),
            (
                "talk-fails.yml",
                "on:\n  issues:\n    types: [opened]\nagent: talkfail\nprompt: hi\noutput: comment\n",
            ),
        ],
    )
    .await;
    let talk = common::manifest_dir().join("tests/agents/talk.sh");
    let gate = spine.gate.display().to_string();
    spine.add_agents(&format!(
        "  talk: {{command: [{talk}, {gate}, \"0\"], timeout: 60s, shared: {{writable: [{gate}]}}}}\n\
         \x20 talkfail: {{command: [{talk}, {gate}, \"3\"], timeout: 60s, shared: {{writable: [{gate}]}}}}\n",
        talk = talk.display()
    ));
    let db = spine.use_store(postgres).await;
    let store = db.store.clone();
    spine.start().await;
    spine
        .deliver_example("issues", "follow-1", "issues/opened.json")
        .await;
    let jobs = wait_for(&*store, "both jobs did not start", |j| {
        j.len() == 2 && j.iter().all(|j| j.state == JobState::Running)
    })
    .await;
    let id_of = |trigger: &str| {
        jobs.iter()
            .find(|j| j.trigger == trigger)
            .unwrap()
            .id
            .to_string()
    };
    let (ok, fails) = (id_of("talk"), id_of("talk-fails"));
    let follow = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_nightshift"))
            .arg("--config")
            .arg(&spine.config)
            .args(["jobs", "--follow", id])
            .env_remove("NIGHTSHIFT_STORE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut followers = [follow(&ok), follow(&fails)];
    let [mut ok_lines, mut fail_lines] = [0, 1].map(|i| lines_of(&mut followers[i]));
    let mut seen: [Vec<String>; 2] = Default::default();
    for (i, rx) in [&mut ok_lines, &mut fail_lines].into_iter().enumerate() {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a line while the job runs");
            seen[i].push(line.clone());
            if line == "[stderr] started, waiting for go" {
                break;
            }
        }
    }
    // The lines came while the jobs run: nothing let them go on yet.
    assert!(
        store
            .jobs()
            .await
            .unwrap()
            .iter()
            .all(|j| j.state == JobState::Running)
    );
    std::fs::write(spine.gate.join("go"), "").unwrap();
    let mut codes = Vec::new();
    for (i, (child, rx)) in followers.iter_mut().zip([ok_lines, fail_lines]).enumerate() {
        let status = tokio::task::block_in_place(|| child.wait().unwrap());
        codes.push(status.code());
        seen[i].extend(rx.iter());
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        let all = seen[i].join("\n");
        assert_terminal_safe(&all);
        assert!(
            all.contains("[stderr] went on \\u{1b}[31mred\\u{1b}[0m"),
            "{all}\n{err}"
        );
        seen[i].push(err);
    }
    assert_eq!(codes, [Some(0), Some(1)], "{seen:#?}");
    assert!(seen[0].last().unwrap().contains("succeeded"));
    assert!(seen[1].last().unwrap().contains("failed"), "{seen:#?}");

    // Filters: by state, trigger and repository; the table stays aligned.
    let failed = nightshift(&spine, &["jobs", "--state", "failed"]);
    assert!(failed.status.success(), "{}", stderr(&failed));
    let out = stdout(&failed);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].trim_start().starts_with("ID  STATE"), "{out}");
    assert_eq!(rows[0].find("STATE"), rows[1].find("failed"), "{out}");
    assert_eq!(rows[0].find("TRIGGER"), rows[1].find("talk-fails"), "{out}");
    assert!(
        rows[1].trim_start().starts_with(&format!("{fails}  ")),
        "{out}"
    );
    let by_trigger = nightshift(&spine, &["jobs", "--trigger", "talk"]);
    let out = stdout(&by_trigger);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    let by_repo = nightshift(
        &spine,
        &["jobs", "--repo", "codertocat/hello-world", "--limit", "1"],
    );
    assert_eq!(stdout(&by_repo).lines().count(), 2);
    let none = nightshift(&spine, &["jobs", "--repo", "someone/else"]);
    assert_eq!(stdout(&none).lines().count(), 1);
    assert!(stderr(&none).contains("no jobs match"));
    let bad = nightshift(&spine, &["jobs", "--state", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("one of queued, running"),
        "{}",
        stderr(&bad)
    );
    let missing = nightshift(&spine, &["jobs", "--follow", "4242"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("there is no job 4242"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_running_job_on_sqlite() {
    following_a_running_job_prints_its_lines_and_exits_with_its_outcome(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_running_job_on_postgres() {
    following_a_running_job_prints_its_lines_and_exits_with_its_outcome(true).await;
}

/// Run where no store exists (the wrong folder, the wrong config), the on-call commands say so, naming the
/// path and the config key, and exit non-zero, instead of creating an empty store and showing nothing.
#[test]
fn the_on_call_commands_refuse_a_store_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("state/nightshift.db");
    let config = dir.path().join("nightshift.yml");
    std::fs::write(&config, format!("store: sqlite://{}\n", missing.display())).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for args in [
        &["jobs"][..],
        &["jobs", "1"],
        &["jobs", "--follow", "1"],
        &["jobs", "cancel", "1"],
        &["jobs", "retry", "1"],
        &["deliveries"],
        &["deliveries", "x"],
        &["prune", "--dry-run"],
    ] {
        for with_config in [true, false] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_nightshift"));
            if with_config {
                cmd.arg("--config").arg(&config);
            }
            let out = cmd
                .args(args)
                .current_dir(&empty)
                .env_remove("NIGHTSHIFT_STORE")
                .env_remove("NIGHTSHIFT_CONFIG")
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            let path = if with_config {
                missing.clone()
            } else {
                empty.join(".nightshift/nightshift.db")
            };
            assert!(
                err.contains(&format!("there is no store at {}", path.display())),
                "{args:?}: {err}"
            );
            assert!(err.contains("`store:`"), "{err}");
            assert!(
                !path.exists() && !path.parent().unwrap().exists(),
                "{args:?}"
            );
        }
    }
}
