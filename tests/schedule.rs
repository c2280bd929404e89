//! Scheduled triggers end to end: a due tick becomes a delivery, a job per listed repository, and its output;
//! after downtime, missed ticks fire once.

mod common;

use common::{Auth, Spine};
use nightshift::store::{JobState, KnownRepo, Store};

const NIGHTLY: (&str, &str) = (
    "nightly.yml",
    "on:\n  schedule:\n    - cron: '* * * * *'\nrepos: [Codertocat/Hello-World]\nagent: reply\n\
     prompt: \"Audit {{ repo }} ({{ event.schedule | trusted }})\"\noutput:\n  type: issue\n  title: Nightly audit\n",
);

#[tokio::test]
async fn a_missed_schedule_fires_once_after_downtime() {
    let mut spine = Spine::new(Auth::Token, &[NIGHTLY]).await;
    // The repository as an earlier delivery taught nightshift, and a last tick ten minutes ago, as if the
    // service had been down since.
    let remote = spine.remote.display().to_string();
    let store = spine.store().await;
    store
        .upsert_repository(&KnownRepo {
            full_name: "Codertocat/Hello-World".into(),
            installation_id: None,
            clone_url: remote,
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    let ten_minutes_ago = nightshift::now_ms() - 10 * 60 * 1000;
    store
        .set_last_tick("* * * * *@UTC", "Codertocat/Hello-World", ten_minutes_ago)
        .await
        .unwrap();

    spine.start().await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert!(
        jobs[0]
            .delivery_id
            .0
            .starts_with("schedule:Codertocat/Hello-World:* * * * *@UTC:"),
        "{:?}",
        jobs[0].delivery_id
    );
    let created = spine.github.created();
    assert_eq!(created.len(), 1, "ten missed ticks fire once");
    assert_eq!(created[0].operation, "issues/create");
    assert_eq!(created[0].body["title"], "Nightly audit");
    let body = created[0].body["body"].as_str().unwrap();
    assert!(
        body.contains("Audit Codertocat/Hello-World (* * * * *)"),
        "{body}"
    );
    spine.assert_no_unexpected_calls();

    // Restarting does not fire the same tick again.
    spine.kill();
    spine.start().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let deliveries = spine.store().await.delivery_count().await.unwrap();
    let jobs = spine.jobs().await;
    assert!(
        jobs.len() <= 2 && deliveries == jobs.len() as u64,
        "at most the next minute's tick: {jobs:?}"
    );
}

#[tokio::test]
async fn a_new_schedule_waits_for_its_first_tick() {
    let mut spine = Spine::new(Auth::Token, &[NIGHTLY]).await;
    // The clock before the service starts: a minute that begins after it may fire (the tick the service
    // records then moves on with it, so it cannot say whether one began).
    let started = nightshift::now_ms();
    spine.start().await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let store = spine.store().await;
    // Repositories nightshift has not seen yet are named as the trigger lists them, matched without case.
    let last = store
        .last_tick("* * * * *@UTC", "codertocat/hello-world")
        .await
        .unwrap();
    assert!(last.is_some(), "the schedule started counting");
    // Counted before the clock is read: a tick that fires between the two (a minute begins) is counted only
    // when the clock says so too.
    let deliveries = store.delivery_count().await.unwrap();
    let now = nightshift::now_ms();
    let ticked_since_start = now / 60_000 != started / 60_000;
    if !ticked_since_start {
        assert_eq!(deliveries, 0, "nothing from before the trigger existed");
    }
}
