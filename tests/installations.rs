//! The GitHub App's installations and missed deliveries, against the fake GitHub under App auth: schedules
//! reach installed repositories nightshift never saw a delivery from (with a token of their installation),
//! patterns match installed repositories, a repository taken off the installation stops its schedule, and
//! deliveries GitHub's log shows as failed or that nightshift never stored are delivered again, signed,
//! and stored once.

mod common;

use std::time::Duration;

use common::{Auth, INSTALLATION, SECRET, Spine};
use nightshift::store::{JobState, Store};
use serde_json::{Value, json};

/// Moves these schedules' last ticks 400 days back, as if nightshift had been down since: the next look fires
/// each schedule once (its latest tick; the schedules here tick monthly or yearly, so none fires by itself
/// while a test runs). (The store's own call only moves ticks forward.)
async fn ticks_long_ago(spine: &Spine, ticks: &[(&str, &str)]) {
    let url = format!(
        "sqlite://{}/state/nightshift.db",
        spine.dir.path().display()
    );
    let store = nightshift::store::SqliteStore::connect(&url).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let then = nightshift::now_ms() - 400 * 24 * 60 * 60 * 1000;
    for (schedule, repo) in ticks {
        store.set_last_tick(schedule, repo, then).await.unwrap();
        sqlx::query("UPDATE schedule_ticks SET last_tick = ? WHERE schedule = ? AND repo = ?")
            .bind(then)
            .bind(schedule)
            .bind(repo)
            .execute(&pool)
            .await
            .unwrap();
    }
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("waited in vain for {what}");
}

fn server_log(spine: &Spine) -> String {
    spine.server.as_ref().unwrap().log()
}

const LITERAL: (&str, &str) = (
    "literal.yml",
    "on:\n  schedule:\n    - cron: '0 0 1 1 *'\nrepos: [codertocat/hello-world]\nagent: reply\n\
     prompt: \"Audit {{ repo }}\"\noutput:\n  type: issue\n  title: Nightly audit\n",
);

const PATTERN: (&str, &str) = (
    "pattern.yml",
    "on:\n  schedule:\n    - cron: '0 0 1 * *'\nrepos: ['codertocat/o*']\nagent: reply\n\
     prompt: \"Look at {{ repo }}\"\noutput:\n  type: issue\n  title: Pattern audit\n",
);

#[tokio::test]
async fn schedules_reach_installed_repositories_nightshift_never_saw() {
    let mut spine = Spine::new(Auth::App, &[LITERAL, PATTERN]).await;
    let remote = spine.remote.display().to_string();
    // Installed on two repositories (one matched by name, one by a pattern) and one more no trigger names;
    // nightshift has had no delivery from any of them.
    spine.github.install(
        INSTALLATION,
        "Codertocat",
        &[
            "Codertocat/Hello-World",
            "Codertocat/Other",
            "Codertocat/Unrelated",
        ],
    );
    for repo in ["Codertocat/Hello-World", "Codertocat/Other"] {
        spine.github.set_clone_url(repo, &remote);
    }
    spine.start().await;
    // The schedules start counting from the first look, under the names as GitHub spells them.
    let store = spine.store().await;
    wait_for("the schedules to start counting", async || {
        let a = store
            .last_tick("0 0 1 1 *@UTC", "Codertocat/Hello-World")
            .await
            .unwrap();
        let b = store
            .last_tick("0 0 1 * *@UTC", "Codertocat/Other")
            .await
            .unwrap();
        (a.is_some() && b.is_some()).then_some(())
    })
    .await;
    let installed = store.installed_repos().await.unwrap();
    assert_eq!(installed.len(), 3, "{installed:?}");
    assert!(
        store
            .last_tick("0 0 1 1 *@UTC", "codertocat/hello-world")
            .await
            .unwrap()
            .is_none(),
        "no second record under the lower-cased name"
    );

    spine.kill();
    ticks_long_ago(
        &spine,
        &[
            ("0 0 1 1 *@UTC", "Codertocat/Hello-World"),
            ("0 0 1 * *@UTC", "Codertocat/Other"),
        ],
    )
    .await;
    spine.start().await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    for job in &jobs {
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
    let mut repos: Vec<&str> = jobs.iter().map(|j| j.repo.as_str()).collect();
    repos.sort();
    assert_eq!(repos, ["Codertocat/Hello-World", "Codertocat/Other"]);

    // Each job ran with a token of the repository's installation, for that repository only.
    let scoped: Vec<(String, Value)> = spine
        .github
        .mints()
        .into_iter()
        .filter(|m| m.body["repositories"].is_array())
        .map(|m| (m.token, m.body["repositories"].clone()))
        .collect();
    for name in ["Hello-World", "Other"] {
        assert!(
            scoped.iter().any(|(token, repos)| token
                .starts_with(&format!("ghs_fake{INSTALLATION}_"))
                && *repos == json!([name])),
            "a token of installation {INSTALLATION} for {name}: {scoped:?}"
        );
    }
    let mut created: Vec<(String, String)> = spine
        .github
        .created()
        .into_iter()
        .map(|c| {
            (
                c.repo,
                c.body["title"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    created.sort();
    assert_eq!(
        created,
        [
            (
                "Codertocat/Hello-World".to_owned(),
                "Nightly audit".to_owned()
            ),
            ("Codertocat/Other".to_owned(), "Pattern audit".to_owned()),
        ]
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_repository_taken_off_the_installation_stops_its_schedule() {
    let every_minute = (
        "all.yml",
        "on:\n  schedule:\n    - cron: '0 0 1 * *'\nrepos: ['codertocat/*']\nagent: reply\n\
         prompt: \"Audit {{ repo }}\"\noutput:\n  type: issue\n  title: Nightly audit\n",
    );
    let mut spine = Spine::new(Auth::App, &[every_minute]).await;
    let remote = spine.remote.display().to_string();
    spine
        .github
        .install(INSTALLATION, "Codertocat", &["Codertocat/Hello-World"]);
    spine
        .github
        .set_clone_url("Codertocat/Hello-World", &remote);
    spine.start().await;
    let store = spine.store().await;
    wait_for("the schedule to start counting", async || {
        store
            .last_tick("0 0 1 * *@UTC", "Codertocat/Hello-World")
            .await
            .unwrap()
    })
    .await;
    spine.kill();
    ticks_long_ago(&spine, &[("0 0 1 * *@UTC", "Codertocat/Hello-World")]).await;
    spine.start().await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);

    // The owner takes the repository off the installation: GitHub says so with a signed event.
    spine
        .github
        .uninstall_repo(INSTALLATION, "Codertocat/Hello-World");
    let mut removed: Value = serde_json::from_slice(&common::fixture(
        "webhooks/installation_repositories/removed.json",
    ))
    .unwrap();
    removed["installation"]["id"] = json!(INSTALLATION);
    removed["installation"]["account"]["login"] = json!("Codertocat");
    removed["repositories_removed"] = json!([{ "id": 1, "name": "hello-world",
        "full_name": "codertocat/hello-world", "private": false }]);
    let status = spine
        .deliver(
            "installation_repositories",
            "removed-1",
            &serde_json::to_vec(&removed).unwrap(),
        )
        .await;
    assert_eq!(status, 202);
    let store = spine.store().await;
    wait_for("the removal to be taken in", async || {
        store
            .installed_repos()
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;

    // Its next tick is due, and skipped: nightshift asks GitHub once, hears it is not installed, runs nothing.
    spine.kill();
    ticks_long_ago(&spine, &[("0 0 1 * *@UTC", "Codertocat/Hello-World")]).await;
    spine.start().await;
    wait_for("the skipped tick", async || {
        server_log(&spine)
            .lines()
            .any(|l| {
                l.contains("scheduled tick skipped: no installation") && l.contains("Hello-World")
            })
            .then_some(())
    })
    .await;
    assert_eq!(spine.jobs().await.len(), 1, "no job after the removal");
    assert_eq!(spine.github.created().len(), 1);
    spine.assert_no_unexpected_calls();
}

/// Gives nightshift a fixed port and points the App's webhook at it, so GitHub can deliver (and redeliver)
/// from the moment nightshift starts.
fn webhook_at_a_fixed_port(spine: &Spine) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(
        &spine.config,
        config.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}")),
    )
    .unwrap();
    spine
        .github
        .set_webhook(&format!("http://127.0.0.1:{port}/webhooks/github"), SECRET);
}

#[tokio::test]
async fn missed_and_failed_deliveries_are_delivered_again_and_stored_once() {
    let mut spine = Spine::new(Auth::App, &[]).await;
    webhook_at_a_fixed_port(&spine);

    // Before the downtime, nightshift stored one delivery.
    let payload = spine.payload("issues/opened.json");
    spine
        .store()
        .await
        .insert_delivery(&nightshift::store::NewDelivery::new(
            nightshift::ids::DeliveryId("stored-before".into()),
            "issues".into(),
            Some("opened".into()),
            Some("Codertocat/Hello-World".into()),
            Some(INSTALLATION as i64),
            payload.clone().into(),
        ))
        .await
        .unwrap();
    // GitHub's log: that one (delivered, and once more failed), one sent while nightshift was down, and one
    // it answered 503 to again and again (120 attempts, so the listing takes more than one page).
    let github = spine.github.clone();
    github.log_delivery("issues", "stored-before", &payload, 202);
    github.log_delivery("issues", "stored-before", &payload, 500);
    github.log_delivery("issues", "while-down", &payload, 0);
    for _ in 0..120 {
        github.log_delivery("issues", "failing", &payload, 503);
    }
    // Two nightshift refused on purpose: asking again would only loop (the same answer every hour for days).
    github.log_delivery("issues", "bad-signature", &payload, 401);
    github.log_delivery("issues", "a-replay", &payload, 200);

    spine.start().await;
    let store = spine.store().await;
    wait_for("both missed deliveries to be stored", async || {
        let have = store
            .known_delivery_ids(&["while-down".into(), "failing".into()])
            .await
            .unwrap();
        (have.len() == 2).then_some(())
    })
    .await;
    let mut asked = github.redelivered();
    asked.sort();
    assert_eq!(
        asked,
        ["failing", "while-down"],
        "each asked for once; none nightshift refused on purpose"
    );
    assert_eq!(store.delivery_count().await.unwrap(), 3);
    wait_for("the redeliveries to be answered", async || {
        let answered: Vec<u16> = github
            .hook_deliveries()
            .into_iter()
            .filter(|d| d.redelivery)
            .map(|d| d.status_code)
            .collect();
        answered.iter().all(|s| *s != 0).then_some(answered)
    })
    .await
    .iter()
    .for_each(|status| assert_eq!(*status, 202, "stored through the webhook"));

    // Restarted: what the store has is not asked for again.
    spine.kill();
    spine.start().await;
    wait_for("the next look", async || {
        server_log(&spine)
            .lines()
            .any(|l| l.contains("missed deliveries looked for"))
            .then_some(())
    })
    .await;
    assert_eq!(github.redelivered().len(), 2);
    assert_eq!(spine.store().await.delivery_count().await.unwrap(), 3);
    spine.assert_no_unexpected_calls();
}

/// `nightshift check` with the service's config: its stdout, and whether it succeeded.
fn check(spine: &Spine) -> (String, bool) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["--config", spine.config.to_str().unwrap(), "check"])
        .env_remove("NIGHTSHIFT_GITHUB_TOKEN")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

#[tokio::test]
async fn check_warns_about_a_named_repository_no_installation_covers() {
    let named = (
        "named.yml",
        "on:\n  schedule:\n    - cron: '0 0 1 1 *'\nrepos: [Codertocat/Hello-World, codertocat/gone]\n\
         agent: reply\nprompt: \"Audit {{ repo }}\"\noutput:\n  type: issue\n  title: Audit\n",
    );
    let mut spine = Spine::new(Auth::App, &[named]).await;
    let db = spine.dir.path().join("state/nightshift.db");

    // No store yet: check stays offline, says nothing about installations, and creates no store.
    let (out, ok) = check(&spine);
    assert!(ok, "{out}");
    assert!(!out.contains("installation"), "{out}");
    assert!(!db.exists(), "check created a store");

    // A store that knows the installations: the repository it has none for is named.
    let store = spine.store().await;
    store
        .upsert_installation(&nightshift::store::Installation {
            id: INSTALLATION as i64,
            account: "Codertocat".into(),
            suspended: false,
        })
        .await
        .unwrap();
    store
        .add_installed_repos(INSTALLATION as i64, &["Codertocat/Hello-World".into()])
        .await
        .unwrap();
    let (out, ok) = check(&spine);
    assert!(ok, "a warning, not a failure: {out}");
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("no installation"))
        .collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].contains("named.yml") && warnings[0].contains("`codertocat/gone`"),
        "{out}"
    );
}

#[tokio::test]
async fn a_flood_of_failed_deliveries_is_asked_for_a_bounded_number_at_a_time() {
    // Someone made nightshift fail 130 deliveries (or it was down through them): one pass asks for 100, the
    // rest wait for the next pass, and none is asked for twice.
    let mut spine = Spine::new(Auth::App, &[]).await;
    webhook_at_a_fixed_port(&spine);
    let payload = spine.payload("issues/opened.json");
    for n in 0..130 {
        spine
            .github
            .log_delivery("issues", &format!("flood-{n}"), &payload, 500);
    }
    spine.start().await;
    let line = wait_for("the first look", async || {
        server_log(&spine)
            .lines()
            .find(|l| l.contains("missed deliveries looked for"))
            .map(str::to_owned)
    })
    .await;
    assert!(
        line.contains("listed=130") && line.contains("missing=130") && line.contains("asked=100"),
        "{line}"
    );
    // The next pass looks back to the oldest of the thirty left, however long ago they came.
    assert!(line.contains("resume_from="), "{line}");
    let asked = spine.github.redelivered();
    assert_eq!(asked.len(), 100);
    let distinct: std::collections::HashSet<&String> = asked.iter().collect();
    assert_eq!(distinct.len(), 100, "none asked for twice");
    let store = spine.store().await;
    wait_for("the hundred to be stored", async || {
        (store.delivery_count().await.unwrap() == 100).then_some(())
    })
    .await;
    spine.assert_no_unexpected_calls();
}
