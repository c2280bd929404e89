//! `/deliveries` and `/deliveries/{delivery_id}`: what came from GitHub (and the schedules), and what came
//! of it: the jobs each delivery's triggers fired, and for each trigger that did not fire the filter that
//! stopped it, as recorded when it was matched ([`Store::recent_deliveries`], the same records
//! `nightshift deliveries` prints).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::fragment::{data, given, path, render, utc, with_query};
use crate::store::{DeliveryFilter, DeliveryRecord, Skipped, Store};

/// Deliveries on a page.
pub const PAGE: u32 = 50;

/// Triggers that did not fire shown under each delivery of the list (its own page shows every one).
pub const SKIPPED_IN_LIST: usize = 5;

/// `/deliveries?event=issues.opened&repo=o/r&nothing=true&before=ID`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeliveriesQuery {
    /// `X-GitHub-Event`, or `event.action`.
    pub event: Option<String>,
    /// A repository's full name (any case).
    pub repo: Option<String>,
    /// Only deliveries that were matched and fired nothing.
    pub nothing: bool,
    /// Only deliveries older than this one (its row id): the next page.
    pub before: Option<i64>,
}

impl DeliveriesQuery {
    fn filter(&self) -> DeliveryFilter {
        let (event, action) = match given(&self.event) {
            Some(e) => match e.split_once('.') {
                Some((event, action)) => (Some(event.to_owned()), Some(action.to_owned())),
                None => (Some(e), None),
            },
            None => (None, None),
        };
        DeliveryFilter {
            repo: given(&self.repo),
            event,
            action,
            // One more than a page: whether there is an older page.
            limit: PAGE + 1,
            before: self.before,
            fired_nothing: self.nothing,
        }
    }

    /// This list's address with `before` set (or left out).
    fn href(&self, before: Option<i64>) -> String {
        let before = before.map(|b| b.to_string()).unwrap_or_default();
        with_query(
            "/deliveries",
            &[
                ("event", self.event.as_deref().unwrap_or_default().trim()),
                ("repo", self.repo.as_deref().unwrap_or_default().trim()),
                ("nothing", if self.nothing { "true" } else { "" }),
                ("before", &before),
            ],
        )
    }
}

/// A delivery as the pages show it.
#[derive(Serialize)]
struct View {
    received: String,
    received_at: String,
    matched: Option<String>,
    event: String,
    event_href: String,
    repo: Option<String>,
    repo_href: Option<String>,
    delivery_id: String,
    href: Option<String>,
    state: &'static str,
    /// `fired`, `nothing` or `waiting`: a class name and what the result column says.
    result: &'static str,
    jobs: Vec<JobView>,
    skipped: Vec<Skipped>,
    /// Skipped triggers not shown here (past the list's share, and those not recorded by name).
    more: u64,
    omitted: u32,
    others: u32,
    note: Option<String>,
    /// Matched before why-not was recorded (or a retry's copy of its event).
    unrecorded: bool,
}

#[derive(Serialize)]
struct JobView {
    id: i64,
    href: String,
    trigger: String,
    state: &'static str,
    error: Option<String>,
}

fn view(d: DeliveryRecord, skipped_shown: usize) -> View {
    let (received, received_at) = utc(d.received_at);
    let result = if d.matched_at.is_none() {
        "waiting"
    } else if d.jobs.is_empty() {
        "nothing"
    } else {
        "fired"
    };
    let event = d.event_name();
    let verdicts = d.verdicts.clone().unwrap_or_default();
    let more = verdicts.skipped.len().saturating_sub(skipped_shown) as u64;
    View {
        received,
        received_at,
        matched: d.matched_at.map(|m| utc(m).0),
        event_href: with_query("/deliveries", &[("event", &event)]),
        event,
        repo_href: d
            .repo
            .as_deref()
            .map(|r| with_query("/deliveries", &[("repo", r)])),
        repo: d.repo.clone(),
        href: path("/deliveries/", &d.delivery_id.0),
        delivery_id: d.delivery_id.0.clone(),
        state: d.state(),
        result,
        jobs: d
            .jobs
            .iter()
            .map(|j| JobView {
                id: j.id.0,
                href: format!("/jobs/{}", j.id.0),
                trigger: j.trigger.clone(),
                state: j.state.as_str(),
                error: j.error.clone(),
            })
            .collect(),
        skipped: verdicts.skipped.into_iter().take(skipped_shown).collect(),
        more,
        omitted: verdicts.omitted,
        others: verdicts.others,
        note: verdicts.note,
        unrecorded: d.matched_at.is_some() && d.verdicts.is_none(),
    }
}

/// `/deliveries`: the newest deliveries the query selects, newest first, [`PAGE`] at a time, each with the
/// jobs it fired and the first [`SKIPPED_IN_LIST`] triggers that did not fire, with why.
pub async fn deliveries(store: &dyn Store, query: &DeliveriesQuery) -> Result<String> {
    let mut records = store.recent_deliveries(&query.filter()).await?;
    let older = (records.len() > PAGE as usize).then(|| {
        records.truncate(PAGE as usize);
        records.last().map(|d| d.id)
    });
    let deliveries: Vec<View> = records
        .into_iter()
        .map(|d| view(d, SKIPPED_IN_LIST))
        .collect();
    render(
        "deliveries",
        minijinja::context! {
            deliveries => data(&deliveries),
            event => query.event.as_deref().unwrap_or_default(),
            repo => query.repo.as_deref().unwrap_or_default(),
            nothing => query.nothing,
            filtered => query.filter().repo.is_some() || query.filter().event.is_some() || query.nothing,
            older => older.flatten().map(|id| query.href(Some(id))),
            newest => query.before.map(|_| query.href(None)),
        },
    )
}

/// `/deliveries/{delivery_id}`: one delivery with every trigger's verdict; `None` when there is no such
/// delivery (the page is a 404).
pub async fn delivery(store: &dyn Store, delivery_id: &str) -> Result<Option<String>> {
    let Some(record) = store.delivery_record(delivery_id).await? else {
        return Ok(None);
    };
    let d = view(record, usize::MAX);
    render("delivery", minijinja::context! { d => data(&d) }).map(Some)
}

// The list. Classes: `deliveries` (the section and the table), `filters`, `delivery` with `fired`,
// `nothing` or `waiting`, `verdicts`, `fired-jobs`, `skipped`, `trigger`, `reason`, `state`, `note`,
// `pager`, `empty`.
// The template: templates/deliveries.html (compiled once, in `fragment`).

// One delivery. Classes: `delivery` with its result, `fields`, `fired-jobs`, `skipped`, `trigger`,
// `reason`, `state`, `note`.
// The template: templates/delivery.html (compiled once, in `fragment`).

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::DeliveryId;
    use crate::store::{Inserted, NewDelivery, NewJob, Verdicts};
    use crate::web::fragment::tests::{HOSTILE, assert_inert};

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&format!("sqlite://{}/n.db", dir.path().display()))
            .await
            .unwrap();
        (dir, store)
    }

    async fn insert(store: &dyn Store, id: &str, action: &str, repo: &str) -> i64 {
        let delivery = NewDelivery::new(
            DeliveryId(id.into()),
            "issues".into(),
            Some(action.into()),
            Some(repo.into()),
            None,
            bytes::Bytes::from_static(b"{}"),
        );
        let Inserted::New(row) = store.insert_delivery(&delivery).await.unwrap() else {
            panic!("{id} was stored before")
        };
        row
    }

    fn job(trigger: &str, repo: &str, error: Option<&str>) -> NewJob {
        NewJob {
            trigger: trigger.into(),
            repo: repo.into(),
            spec: "{}".into(),
            error: error.map(Into::into),
            concurrency_group: None,
            cancel_in_progress: false,
        }
    }

    fn stopped(skipped: &[(&str, &str)], others: u32) -> Verdicts {
        let mut v = Verdicts::default();
        for (trigger, reason) in skipped {
            v.skip(trigger, reason);
        }
        v.others = others;
        v
    }

    #[tokio::test]
    async fn a_delivery_that_fired_nothing_shows_the_filter_that_stopped_each_trigger() {
        let (_dir, store) = sqlite().await;
        let quiet = insert(&*store, "quiet-1", "opened", "o/r").await;
        let verdicts = stopped(
            &[
                ("triage", "type `opened` is not one of types [labeled]"),
                ("review", "labels [question] include none of [bug]"),
            ],
            2,
        );
        store
            .record_match_explained(quiet, &[], Some(&verdicts))
            .await
            .unwrap();
        let loud = insert(&*store, "loud-2", "labeled", "o/r").await;
        store
            .record_match_explained(loud, &[job("fix", "o/r", None)], Some(&stopped(&[], 0)))
            .await
            .unwrap();
        let fix = store.jobs().await.unwrap()[0].id.0;

        let all = deliveries(&*store, &DeliveriesQuery::default())
            .await
            .unwrap();
        assert!(all.contains("quiet-1") && all.contains("loud-2"), "{all}");
        assert!(
            all.contains(&format!("<a href=\"/jobs/{fix}\">fix #{fix}</a>")),
            "the job it fired links to its page:\n{all}"
        );
        assert!(all.contains("<td>fired nothing</td>") && all.contains("<td>fired 1</td>"));

        let nothing = DeliveriesQuery {
            nothing: true,
            ..Default::default()
        };
        let page = deliveries(&*store, &nothing).await.unwrap();
        assert!(
            page.contains("quiet-1") && !page.contains("loud-2"),
            "{page}"
        );
        for (trigger, reason) in [
            ("triage", "type `opened` is not one of types [labeled]"),
            ("review", "labels [question] include none of [bug]"),
        ] {
            assert!(
                page.contains(&format!(
                    "not fired: <span class=\"trigger\">{trigger}</span>: <span class=\"reason\">{reason}</span>"
                )),
                "{trigger}'s stopping filter is shown:\n{page}"
            );
        }
        assert!(page.contains("<input type=\"checkbox\" name=\"nothing\" value=\"true\" checked>"));

        let one = delivery(&*store, "quiet-1").await.unwrap().unwrap();
        assert!(one.contains("<span class=\"trigger\">review</span>: <span class=\"reason\">labels [question] include none of [bug]</span>"), "{one}");
        assert!(
            one.contains("2 other trigger(s) do not listen to <code>issues.opened</code> events")
        );
        assert!(one.contains("<p>Nothing.</p>"));
        assert!(delivery(&*store, "nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn hostile_ids_names_and_reasons_are_shown_as_text() {
        let (_dir, store) = sqlite().await;
        let [markup, breakout, ansi, bidi] = HOSTILE;
        let id = format!("{breakout}/../../x");
        let row = insert(&*store, &id, ansi, &format!("o/{markup}")).await;
        let mut verdicts = stopped(&[(bidi, markup), (markup, breakout)], 1);
        verdicts.note(markup);
        store
            .record_match_explained(row, &[job(breakout, "o/r", Some(ansi))], Some(&verdicts))
            .await
            .unwrap();
        let list = deliveries(
            &*store,
            &DeliveriesQuery {
                repo: Some(format!("o/{markup}")),
                event: Some(format!("issues.{ansi}")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let one = delivery(&*store, &id).await.unwrap().unwrap();
        for page in [&list, &one] {
            assert_inert(page);
            assert!(
                page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{page}"
            );
            assert!(page.contains("&quot;&#39;&gt;&lt;img src=x onerror=alert(1)&gt;"));
            assert!(page.contains("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"));
            assert!(page.contains("a\\u{202e}gnp.exe"));
        }
        // The delivery's own link is one path segment, whatever its id holds.
        assert!(
            list.contains("href=\"/deliveries/%22%27%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%2F..%2F..%2Fx\""),
            "{list}"
        );
    }

    #[tokio::test]
    async fn deliveries_are_paged_older_by_row_id() {
        let (_dir, store) = sqlite().await;
        let mut rows = Vec::new();
        for n in 0..PAGE + 10 {
            let row = insert(&*store, &format!("d-{n}"), "opened", "o/r").await;
            store.record_match(row, &[]).await.unwrap();
            rows.push(row);
        }
        let first = deliveries(&*store, &DeliveriesQuery::default())
            .await
            .unwrap();
        assert_eq!(
            first.matches("<tr class=\"delivery ").count(),
            PAGE as usize
        );
        assert!(first.contains(&format!("d-{}<", PAGE + 9)) && !first.contains("d-9<"));
        // The oldest delivery shown is where the next page starts.
        let oldest_shown = rows[10];
        let older = format!("href=\"/deliveries?before={oldest_shown}\" rel=\"next\"");
        assert!(first.contains(&older), "{first}");

        let query = DeliveriesQuery {
            before: Some(oldest_shown),
            ..Default::default()
        };
        let second = deliveries(&*store, &query).await.unwrap();
        assert_eq!(second.matches("<tr class=\"delivery ").count(), 10);
        assert!(second.contains("d-9<") && second.contains("d-0<"));
        assert!(
            !second.contains("rel=\"next\""),
            "the last page has no older page"
        );
        assert!(second.contains("href=\"/deliveries\">Newest</a>"));

        // Filters are kept from page to page.
        let filtered = DeliveriesQuery {
            repo: Some("o/r".into()),
            nothing: true,
            ..Default::default()
        };
        let page = deliveries(&*store, &filtered).await.unwrap();
        assert!(page.contains(&format!(
            "href=\"/deliveries?repo=o%2Fr&amp;nothing=true&amp;before={oldest_shown}\""
        )));
        assert!(page.contains("value=\"o/r\""));
    }

    /// Figures, not a check: what a full page weighs against the same records as `nightshift deliveries
    /// --json` prints them, and how long rendering takes against reading the records.
    /// `cargo nextest run --lib web::deliveries::tests::page_weight --run-ignored only --no-capture`
    #[tokio::test]
    #[ignore = "prints figures"]
    async fn page_weight() {
        let (_dir, store) = sqlite().await;
        for n in 0..PAGE {
            let row = insert(
                &*store,
                &format!("72f7f6a0-{n:04}-11f0-8d6e-1c3a0b7e9c2d"),
                "opened",
                "acme/api",
            )
            .await;
            let reasons: Vec<(String, String)> = (0..8)
                .map(|t| {
                    (
                        format!("trigger-{t}"),
                        format!("labels [x] include none of [bug-{t}]"),
                    )
                })
                .collect();
            let reasons: Vec<(&str, &str)> = reasons
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let jobs = if n % 3 == 0 {
                vec![job("fix", "acme/api", None)]
            } else {
                vec![]
            };
            store
                .record_match_explained(row, &jobs, Some(&stopped(&reasons, 4)))
                .await
                .unwrap();
        }
        let query = DeliveriesQuery::default();
        let rounds = 50;
        let start = std::time::Instant::now();
        let mut records = Vec::new();
        for _ in 0..rounds {
            records = store.recent_deliveries(&query.filter()).await.unwrap();
        }
        let read = start.elapsed() / rounds;
        let start = std::time::Instant::now();
        let mut page = String::new();
        for _ in 0..rounds {
            page = deliveries(&*store, &query).await.unwrap();
        }
        let whole = start.elapsed() / rounds;
        records.truncate(PAGE as usize);
        let json = serde_json::to_string(&records).unwrap();
        eprintln!(
            "page {} bytes, JSON of the same records {} bytes: {:.2}x; read {:?}, read and render {:?}: {:.2}x",
            page.len(),
            json.len(),
            page.len() as f64 / json.len() as f64,
            read,
            whole,
            whole.as_secs_f64() / read.as_secs_f64()
        );
    }
}
