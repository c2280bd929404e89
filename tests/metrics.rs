//! Operating the service: `/metrics` scraped after real deliveries and a real job (through the binary and
//! the fake GitHub) and parsed as Prometheus text; `/readyz` when the store goes away; `log_format: json`.

mod common;

use std::time::Duration;

use common::fake_github::Fault;
use common::model_server::{ChatReply, ModelServer};
use common::postgres::PgServer;
use common::{Auth, Spine, append_config, sign};
use nightshift::store::JobState;
use prometheus_parse::{Sample, Scrape, Value};

const SUMMARY: (&str, &str) = (
    "summary.yml",
    "on:\n  issues:\n    types: [opened]\nagent: summarizer\nprompt: Summarize issue {{ event.issue.number }}.\n",
);

const TRIAGE: (&str, &str) = (
    "triage.yml",
    "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: Triage issue {{ event.issue.number }}.\n",
);

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    nightshift::install_tls_provider();
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The samples named `name` whose labels include every pair of `labels`.
fn samples<'s>(scrape: &'s Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'s Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The value of the one sample named `name` with `labels` (0 when there is none).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, name, labels);
    assert!(found.len() <= 1, "{name} {labels:?}: {found:#?}");
    match found.first().map(|s| &s.value) {
        None => 0.0,
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(other) => panic!("{name}: not a single value: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_count_deliveries_jobs_spend_and_github_calls() {
    let model = ModelServer::chat(vec![ChatReply::Answer(
        "The model's summary.".into(),
        120,
        30,
    )])
    .await;
    let mut spine = Spine::new(Auth::App, &[SUMMARY]).await;
    spine.add_agents(&format!(
        "  summarizer: {{openai: {{model: local-model, base_url: \"{}/v1\", api_key_env: TEST_LLM_KEY}}, timeout: 60s}}\n",
        model.url
    ));
    append_config(
        &spine,
        "gateway:\n  prices:\n    local-model: {input: 1.0, output: 2.0}\nmetrics:\n  token: scrape-s3cret\n",
    );
    // Replays on (the shared config turns them off for its tests).
    let config = std::fs::read_to_string(&spine.config).unwrap();
    let config = config.replace("replay_window: 0s", "replay_window: 1h");
    std::fs::write(&spine.config, config).unwrap();
    spine.start_with_env(&[("TEST_LLM_KEY", "sk-llm")]).await;
    let metrics = format!("{}/metrics", spine.url());

    // Only the scraper with the token reads them.
    assert_eq!(get(&metrics, None).await.0, 401);
    assert_eq!(get(&metrics, Some("scrape-s3cre")).await.0, 401);
    assert_eq!(get(&metrics, Some("wrong")).await.0, 401);

    // GitHub is rate limited for the progress comment once: the limit's 403 is counted, and what it said is
    // left is the gauge's.
    spine.github.fail_next(
        "issues/create-comment",
        &[Fault::RateLimit {
            status: 403,
            reset_in: 0,
        }],
    );
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "m-1", &body).await, 202);
    assert_eq!(
        spine.deliver("issues", "m-1", &body).await,
        200,
        "a duplicate"
    );
    assert_eq!(spine.deliver("issues", "m-2", &body).await, 200, "a replay");
    // An attacker without the secret, inventing event names (the header is read before the signature is
    // checked): each is refused and counted, under `other`, never as a label of its own.
    for event in ["issues", "x\"} 1 fake_metric 2", "made_up_event", "ISSUES"] {
        let status = spine
            .post(
                b"{}",
                &[
                    ("X-GitHub-Event", event),
                    ("X-GitHub-Delivery", "forged"),
                    ("X-Hub-Signature-256", &sign("not-the-secret", b"{}")),
                ],
            )
            .await;
        assert_eq!(status, 401);
    }
    let unsigned = spine
        .post(
            &body,
            &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "u-1")],
        )
        .await;
    assert_eq!(unsigned, 401);

    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);

    let (status, text) = get(&metrics, Some("scrape-s3cret")).await;
    assert_eq!(status, 200, "{text}");
    let scrape = parse(&text);
    let deliveries = "nightshift_webhook_deliveries_total";
    let of = |event, result| value(&scrape, deliveries, &[("event", event), ("result", result)]);
    assert_eq!(of("issues", "stored"), 1.0, "{text}");
    assert_eq!(of("issues", "duplicate"), 1.0, "{text}");
    assert_eq!(of("issues", "replayed"), 1.0, "{text}");
    assert_eq!(of("issues", "bad_signature"), 1.0, "{text}");
    assert_eq!(of("other", "bad_signature"), 3.0, "{text}");
    assert_eq!(of("push", "unsigned"), 1.0, "{text}");
    for sample in samples(&scrape, deliveries, &[]) {
        let event = sample.labels.get("event").unwrap();
        assert!(["issues", "push", "other"].contains(&event), "{text}");
    }
    assert!(
        !text.contains("fake_metric") && !text.contains("made_up"),
        "{text}"
    );
    // No repository (or anything else from a payload) is a label.
    assert!(!text.contains("Hello-World"), "{text}");

    // Jobs by state and the queue, read from the store.
    assert_eq!(
        value(&scrape, "nightshift_jobs", &[("state", "succeeded")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "nightshift_jobs", &[("state", "queued")]),
        0.0
    );
    assert_eq!(value(&scrape, "nightshift_queue_depth", &[]), 0.0);
    assert_eq!(value(&scrape, "nightshift_deliveries_unmatched", &[]), 0.0);
    // The job's wait in the queue and its duration were observed, under its agent profile.
    let summarizer = [("agent", "summarizer")];
    assert_eq!(
        value(
            &scrape,
            "nightshift_job_queue_wait_seconds_count",
            &summarizer
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &scrape,
            "nightshift_job_duration_seconds_count",
            &[("agent", "summarizer"), ("outcome", "succeeded")]
        ),
        1.0,
        "{text}"
    );
    // What the agent spent, as the gateway metered it.
    assert_eq!(
        value(
            &scrape,
            "nightshift_agent_tokens_total",
            &[("agent", "summarizer"), ("kind", "input")]
        ),
        120.0
    );
    assert_eq!(
        value(
            &scrape,
            "nightshift_agent_tokens_total",
            &[("agent", "summarizer"), ("kind", "output")]
        ),
        30.0
    );
    let cost = value(&scrape, "nightshift_agent_cost_usd_total", &summarizer);
    let expected = (120.0 * 1.0 + 30.0 * 2.0) / 1e6;
    assert!(
        (cost - expected).abs() < 1e-9,
        "{cost} != {expected}: {text}"
    );
    // GitHub's answers by class, with the rate limit's 403 and what it said was left.
    let github = "nightshift_github_requests_total";
    assert!(
        value(&scrape, github, &[("result", "2xx")]) >= 3.0,
        "{text}"
    );
    assert_eq!(value(&scrape, github, &[("result", "4xx")]), 1.0, "{text}");
    assert_eq!(
        value(
            &scrape,
            "nightshift_github_rate_limit_remaining",
            &[("resource", "core")]
        ),
        0.0
    );
    // The store's latency around the ingest writer's commit and the claim.
    for op in ["ingest_commit", "claim"] {
        assert!(
            value(&scrape, "nightshift_store_seconds_count", &[("op", op)]) >= 1.0,
            "{op}: {text}"
        );
    }
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn without_a_token_metrics_are_open_and_healthz_and_readyz_answer() {
    let mut spine = Spine::new(Auth::Token, &[TRIAGE]).await;
    spine.start().await;
    let (status, text) = get(&format!("{}/metrics", spine.url()), None).await;
    assert_eq!(status, 200);
    let scrape = parse(&text);
    assert_eq!(
        value(&scrape, "nightshift_jobs", &[("state", "queued")]),
        0.0
    );
    assert_eq!(get(&format!("{}/healthz", spine.url()), None).await.0, 200);
    let (status, ready) = get(&format!("{}/readyz", spine.url()), None).await;
    assert_eq!((status, ready.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn readyz_says_when_the_postgres_store_stops_answering() {
    let postgres = PgServer::start();
    let mut spine = Spine::new(Auth::Token, &[TRIAGE]).await;
    let config = std::fs::read_to_string(&spine.config).unwrap();
    let sqlite = config.lines().find(|l| l.starts_with("store: ")).unwrap();
    let config = config.replace(sqlite, &format!("store: \"{}\"", postgres.url()));
    std::fs::write(&spine.config, config).unwrap();
    spine.start().await;
    let readyz = format!("{}/readyz", spine.url());
    assert_eq!(get(&readyz, None).await, (200, "ready\n".to_owned()));

    drop(postgres);
    // Each answer is reused for a second; the next probe after it asks the store again.
    let mut answer = get(&readyz, None).await;
    for _ in 0..100 {
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = get(&readyz, None).await;
    }
    let (status, why) = answer;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("the store does not answer"), "{why}");
    // The process itself still lives.
    assert_eq!(get(&format!("{}/healthz", spine.url()), None).await.0, 200);
}

#[tokio::test]
async fn json_logs_carry_the_jobs_fields_on_every_line() {
    let mut spine = Spine::new(Auth::Token, &[TRIAGE]).await;
    append_config(&spine, "log_format: json\n");
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "j-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let job = jobs[0].id.to_string();
    // The job's last line is written just after its end is stored.
    let mut log = String::new();
    for _ in 0..100 {
        log = spine.server.as_ref().unwrap().log();
        if log.contains("job succeeded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let stored = lines
        .iter()
        .find(|l| l["message"] == "delivery stored")
        .expect("the delivery was logged");
    assert_eq!(stored["delivery"], "j-1");
    let succeeded = lines
        .iter()
        .find(|l| l["message"] == "job succeeded")
        .unwrap_or_else(|| panic!("the job's end was logged:\n{log}"));
    let span = &succeeded["span"];
    assert_eq!(span["name"], "job");
    assert_eq!(span["id"], job.as_str());
    assert_eq!(span["trigger"], "triage");
    assert_eq!(span["repo"], "Codertocat/Hello-World");
    assert_eq!(span["delivery"], "j-1");
    assert!(succeeded["spans"].as_array().is_some_and(|s| !s.is_empty()));
}
