//! `/budgets`: what each repository's jobs spent per UTC day over the last two weeks (dollars and tokens),
//! against the daily budget per repository (`budgets.per_repository_daily_usd`, which the model gateway
//! enforces from the same records), and the per-job limits of each agent profile.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::fragment::{data, dollars, given, render, with_query};
use crate::config::Config;
use crate::store::{DAY_MS, DaySpend, Store};

/// Days shown, today (UTC) included.
pub const DAYS: i64 = 14;

/// `/budgets?repo=o/r`: one repository's days only.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct BudgetsQuery {
    pub repo: Option<String>,
}

#[derive(Serialize)]
struct Row {
    day: String,
    repo: String,
    repo_href: String,
    jobs: u64,
    spent: String,
    /// Share of the daily budget, in percent (none configured: `None`).
    share: Option<u64>,
    over: bool,
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize, Default)]
struct Total {
    repo: String,
    repo_href: String,
    jobs: u64,
    cost_usd: f64,
    spent: String,
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
    /// Days it reached its daily budget.
    days_over: u64,
}

#[derive(Serialize)]
struct Profile {
    name: String,
    max_cost_usd: Option<String>,
    max_tokens: Option<u32>,
}

fn day_name(day: i64) -> String {
    jiff::Timestamp::from_millisecond(day)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| day.to_string())
}

/// `/budgets` at `now` (unix ms): the last [`DAYS`] UTC days' spend by repository and day, newest day
/// first, with each repository's total over them.
pub async fn budgets(
    store: &dyn Store,
    config: &Config,
    now: i64,
    query: &BudgetsQuery,
) -> Result<String> {
    let today = now - now.rem_euclid(DAY_MS);
    let since = today - (DAYS - 1) * DAY_MS;
    let only = given(&query.repo).map(|r| r.to_lowercase());
    let mut days: Vec<DaySpend> = store
        .spend_by_day(since)
        .await?
        .into_iter()
        .filter(|d| only.as_ref().is_none_or(|r| d.repo.to_lowercase() == *r))
        .collect();
    let daily = config.gateway.per_repository_daily_usd;
    let mut totals: BTreeMap<String, Total> = BTreeMap::new();
    for d in &days {
        let over = daily.is_some_and(|b| d.cost_usd >= b);
        let t = totals.entry(d.repo.clone()).or_default();
        t.jobs += d.jobs;
        t.cost_usd += d.cost_usd;
        t.input_tokens += d.input_tokens;
        t.cached_input_tokens += d.cached_input_tokens;
        t.output_tokens += d.output_tokens;
        t.days_over += u64::from(over);
    }
    let repo_href = |repo: &str| with_query("/budgets", &[("repo", repo)]);
    let mut totals: Vec<Total> = totals
        .into_iter()
        .map(|(repo, t)| Total {
            repo_href: repo_href(&repo),
            spent: dollars(t.cost_usd),
            repo,
            ..t
        })
        .collect();
    totals.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(a.repo.cmp(&b.repo)));
    // Newest day first; within a day, the biggest spender first.
    days.sort_by(|a, b| {
        b.day
            .cmp(&a.day)
            .then(b.cost_usd.total_cmp(&a.cost_usd))
            .then(a.repo.cmp(&b.repo))
    });
    let rows: Vec<Row> = days
        .into_iter()
        .map(|d| Row {
            day: day_name(d.day),
            repo_href: repo_href(&d.repo),
            jobs: d.jobs,
            spent: dollars(d.cost_usd),
            share: daily.map(|b| (d.cost_usd / b * 100.0).round().max(0.0) as u64),
            over: daily.is_some_and(|b| d.cost_usd >= b),
            input_tokens: d.input_tokens,
            cached_input_tokens: d.cached_input_tokens,
            output_tokens: d.output_tokens,
            repo: d.repo,
        })
        .collect();
    let profiles: Vec<Profile> = config
        .agents
        .iter()
        .map(|(name, p)| Profile {
            name: name.clone(),
            max_cost_usd: p.max_cost_usd.map(dollars),
            max_tokens: p.max_tokens,
        })
        .collect();
    render(
        "budgets",
        minijinja::context! {
            rows => data(&rows),
            totals => data(&totals),
            profiles => data(&profiles),
            daily => daily.map(dollars),
            from => day_name(since),
            to => day_name(today),
            repo => query.repo.as_deref().unwrap_or_default(),
            all_href => only.as_ref().map(|_| with_query("/budgets", &[])),
        },
    )
}

// Classes: `budgets` (the section), `filters`, `spend-totals`, `spend-days`, `over` (a day at or past
// its budget, a repository with such days), `limits`, `num` (number cells), `empty`.
// The template: templates/budgets.html (compiled once, in `fragment`).

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::ConfigSource;
    use crate::ids::DeliveryId;
    use crate::store::{Inserted, NewDelivery, NewJob, Usage};
    use crate::web::fragment::tests::{HOSTILE, assert_inert};

    fn config(dir: &Path, budget: &str) -> Config {
        let path = dir.join("nightshift.yml");
        std::fs::write(
            &path,
            format!(
                "{budget}agents:\n  a:\n    openai: {{model: m, base_url: 'http://localhost:9/v1'}}\n    \
                 max_cost_usd: 0.5\n  b:\n    command: [cat]\n"
            ),
        )
        .unwrap();
        Config::load(&ConfigSource {
            path: &path,
            required: true,
            env: &|_| None,
        })
        .unwrap()
    }

    /// Jobs of `repos`, started at `starts` (unix ms) with `costs`, in a SQLite store under `dir`.
    async fn spent(dir: &Path, jobs: &[(&str, i64, f64)]) -> Arc<dyn Store> {
        let url = format!("sqlite://{}/n.db", dir.display());
        let store = crate::store::open(&url).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for (n, (repo, start, cost)) in jobs.iter().enumerate() {
            let delivery = NewDelivery::new(
                DeliveryId(format!("d{n}")),
                "issues".into(),
                None,
                Some((*repo).into()),
                None,
                bytes::Bytes::from_static(b"{}"),
            );
            let Inserted::New(row) = store.insert_delivery(&delivery).await.unwrap() else {
                panic!()
            };
            let job = NewJob {
                trigger: "t".into(),
                repo: (*repo).into(),
                spec: "{}".into(),
                error: None,
                concurrency_group: None,
                cancel_in_progress: false,
            };
            store.record_match(row, &[job]).await.unwrap();
            let id: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE delivery_id = ?")
                .bind(row)
                .fetch_one(&pool)
                .await
                .unwrap();
            sqlx::query("UPDATE jobs SET started_at = ? WHERE id = ?")
                .bind(start)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
            let usage = Usage {
                cost_usd: Some(*cost),
                input_tokens: Some(1000),
                output_tokens: Some(10),
                ..Usage::default()
            };
            store
                .record_usage(crate::ids::JobId(id), &usage)
                .await
                .unwrap();
        }
        store
    }

    #[tokio::test]
    async fn spend_is_shown_per_repository_and_utc_day_against_the_daily_budget() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "budgets:\n  per_repository_daily_usd: 1\n");
        let midnight = 20_000 * DAY_MS;
        let now = midnight + 3_600_000;
        let hostile = format!("o/{}", HOSTILE[0]);
        let store = spent(
            dir.path(),
            &[
                ("o/a", midnight - 1, 0.5),
                ("o/a", midnight, 0.75),
                ("o/a", midnight + 1000, 0.25),
                ("o/b", midnight + 5, 0.125),
                (&hostile, midnight - 13 * DAY_MS, 2.0),
                // Fifteen days ago: not shown.
                ("o/old", midnight - 14 * DAY_MS, 9.0),
            ],
        )
        .await;
        let page = budgets(&*store, &config, now, &BudgetsQuery::default())
            .await
            .unwrap();
        assert_inert(&page);
        assert!(
            page.contains("Daily budget per repository: <strong>$1.00</strong>"),
            "{page}"
        );
        assert!(page.contains("2024-09-21 to 2024-10-04"), "{page}");
        // Today, o/a reached its budget exactly: 0.75 + 0.25, either side of nothing; yesterday's job not.
        assert!(page.contains(
            "<tr class=\"over\"><td>2024-10-04</td><td><a href=\"/budgets?repo=o%2Fa\">o/a</a></td>\
             <td class=\"num\">2</td><td class=\"num\">$1.00</td><td class=\"num\">100%</td>\
             <td class=\"num\">2000</td><td class=\"num\">0</td><td class=\"num\">20</td></tr>"
        ), "{page}");
        assert!(page.contains(
            "<tr><td>2024-10-03</td><td><a href=\"/budgets?repo=o%2Fa\">o/a</a></td>\
             <td class=\"num\">1</td><td class=\"num\">$0.5000</td><td class=\"num\">50%</td>"
        ));
        assert!(page.contains(
            "<tr><td>2024-10-04</td><td><a href=\"/budgets?repo=o%2Fb\">o/b</a></td>\
             <td class=\"num\">1</td><td class=\"num\">$0.1250</td><td class=\"num\">13%</td>"
        ));
        // Over the two weeks, by repository: o/a's three jobs, one day at budget; the oldest day is in.
        assert!(page.contains(
            "<tr class=\"over\"><td><a href=\"/budgets?repo=o%2Fa\">o/a</a></td><td class=\"num\">3</td>\
             <td class=\"num\">$1.50</td><td class=\"num\">3000</td><td class=\"num\">0</td>\
             <td class=\"num\">30</td><td class=\"num\">1</td></tr>"
        ), "{page}");
        assert!(page.contains("<td>2024-09-21</td>") && page.contains("o/&lt;script&gt;"));
        assert!(!page.contains("o/old"), "fifteen days ago is not shown");
        // The per-job limits of each profile.
        assert!(page.contains(
            "<tr><td>a</td><td class=\"num\">$0.5000</td><td class=\"num\">none</td></tr>"
        ));
        assert!(
            page.contains(
                "<tr><td>b</td><td class=\"num\">none</td><td class=\"num\">none</td></tr>"
            )
        );

        let only = BudgetsQuery {
            repo: Some("O/B".into()),
        };
        let page = budgets(&*store, &config, now, &only).await.unwrap();
        assert!(page.contains("o/b") && !page.contains(">o/a<"), "{page}");
    }

    #[tokio::test]
    async fn without_a_daily_budget_spend_is_shown_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "");
        let midnight = 20_000 * DAY_MS;
        let store = spent(dir.path(), &[("o/a", midnight, 5.0)]).await;
        let page = budgets(&*store, &config, midnight, &BudgetsQuery::default())
            .await
            .unwrap();
        assert!(page.contains("No daily budget per repository is configured"));
        assert!(!page.contains("class=\"over\"") && !page.contains("%</td>"));
        assert!(page.contains("<td class=\"num\">$5.00</td>"));
    }
}
