//! `/metrics`: what the service did, in Prometheus' (OpenMetrics) text format, for a scraper.
//!
//! Counters and histograms live in one process-wide registry ([`global`]) and are touched where things
//! happen: the webhook endpoint (a middleware around it, [`count_deliveries`]), the ingest writer's commit
//! and the claim ([`time_store`]), the worker ([`job_started`], [`job_ended`], [`agent_spent`]) and the one
//! GitHub call layer ([`github_answered`], [`github_no_answer`]). Jobs by state, the queue's depth and the
//! deliveries not yet matched are read from the store when scraped (one `GROUP BY` over an index), at most
//! once a second however often `/metrics` is asked.
//!
//! **Cardinality.** Every label value comes from a set the operator bounds: the event is one of GitHub's
//! webhook events or `other` (the `X-GitHub-Event` header is read before the signature is checked, so an
//! attacker may send any string), agent profiles are the configured ones or `other` (a repository's own
//! trigger names one), results and status classes are fixed lists. No repository, trigger, delivery or
//! installation is ever a label: a repository can name thousands, and a repository's own triggers are named
//! by whoever writes to it.
//!
//! **Access.** `/metrics` is served on the webhook port. With `metrics.token` (or
//! `NIGHTSHIFT_METRICS_TOKEN`) set, a scraper must send it as `Authorization: Bearer TOKEN` (401 otherwise);
//! without one it is open: it says how much happens and what it costs, never what (no repository, payload
//! or text), and a reverse proxy can keep it private.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use octocrab::secrecy::{ExposeSecret, SecretString};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::{Counts, JobState, Store};

/// GitHub's webhook events (`X-GitHub-Event`), sorted: the values the `event` label can take besides
/// `other`.
const EVENTS: &[&str] = &[
    "branch_protection_configuration",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "custom_property",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issue_dependencies",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "ping",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "projects_v2_status_update",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "secret_scanning_scan",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

/// The `event` label of a delivery: a known webhook event's name, or `other`.
pub fn event_label(event: Option<&str>) -> &'static str {
    event
        .and_then(|e| EVENTS.binary_search(&e).ok())
        .map_or("other", |i| EVENTS[i])
}

/// The `agent` label of a job: its profile when the configuration has it, or `other`.
pub fn agent_label(config: &crate::config::Config, agent: &str) -> String {
    if config.agents.contains_key(agent) {
        agent.to_owned()
    } else {
        "other".to_owned()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    event: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    agent: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    agent: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

/// GitHub's rate limit resources (`x-ratelimit-resource`): the values the `resource` label can take besides
/// `other`.
const RESOURCES: &[&str] = &[
    "actions_runner_registration",
    "audit_log",
    "code_scanning_autofix",
    "code_scanning_upload",
    "code_search",
    "core",
    "dependency_snapshots",
    "graphql",
    "integration_manifest",
    "scim",
    "search",
    "source_import",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 1 s to about 9 h (queue waits, job durations).
fn long_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Seconds from 0.5 ms to about 8 s (store calls).
fn short_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    deliveries: Family<DeliveryLabels, Counter>,
    queue_wait: Histograms<AgentLabels>,
    job_duration: Histograms<JobLabels>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<AgentLabels, Counter<f64, AtomicU64>>,
    github: Family<ResultLabels, Counter>,
    rate_limit: Family<ResourceLabels, Gauge>,
    store: Histograms<OpLabels>,
    jobs: Family<StateLabels, Gauge>,
    queue_depth: Gauge,
    unmatched: Gauge,
    /// The last read of the store's counts, and when: scrapes within a second share it.
    counts: tokio::sync::Mutex<Option<(Instant, Counts)>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            deliveries: Family::default(),
            queue_wait: Family::new_with_constructor(long_buckets),
            job_duration: Family::new_with_constructor(long_buckets),
            tokens: Family::default(),
            cost: Family::default(),
            github: Family::default(),
            rate_limit: Family::default(),
            store: Family::new_with_constructor(short_buckets),
            jobs: Family::default(),
            queue_depth: Gauge::default(),
            unmatched: Gauge::default(),
            counts: tokio::sync::Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register(
            "nightshift_webhook_deliveries",
            "Webhook requests by event and how they were answered: stored, duplicate, replayed, \
             unsigned, bad_signature, bad_request, too_large, timed_out, unavailable",
            m.deliveries.clone(),
        );
        registry.register(
            "nightshift_jobs",
            "Jobs in the store by state",
            m.jobs.clone(),
        );
        registry.register(
            "nightshift_queue_depth",
            "Jobs queued (waiting to start, also those waiting out a backoff or a cap)",
            m.queue_depth.clone(),
        );
        registry.register(
            "nightshift_deliveries_unmatched",
            "Stored deliveries not matched against the triggers yet",
            m.unmatched.clone(),
        );
        registry.register(
            "nightshift_job_queue_wait_seconds",
            "From a job's queueing to its first start, by agent profile",
            m.queue_wait.clone(),
        );
        registry.register(
            "nightshift_job_duration_seconds",
            "From a job's first start to its end, by agent profile and outcome",
            m.job_duration.clone(),
        );
        registry.register(
            "nightshift_agent_tokens",
            "Model tokens agents spent, by agent profile and kind (input, cached_input, output)",
            m.tokens.clone(),
        );
        registry.register(
            "nightshift_agent_cost_usd",
            "What agents spent in US dollars, by agent profile",
            m.cost.clone(),
        );
        registry.register(
            "nightshift_github_requests",
            "Requests to GitHub's API by result: the status class (2xx, 3xx, 4xx, 5xx) or no_answer",
            m.github.clone(),
        );
        registry.register(
            "nightshift_github_rate_limit_remaining",
            "x-ratelimit-remaining of GitHub's latest answer that carried it, by rate limit resource",
            m.rate_limit.clone(),
        );
        registry.register(
            "nightshift_store_seconds",
            "Store calls by operation: ingest_commit (a batch of deliveries), claim",
            m.store.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text a scrape gets: the store's counts (read at most once a second), then every metric.
    pub async fn render(&self, store: &dyn Store) -> String {
        {
            let mut last = self.counts.lock().await;
            let fresh = last
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1));
            if !fresh {
                match tokio::time::timeout(Duration::from_secs(5), store.counts()).await {
                    Ok(Ok(counts)) => *last = Some((Instant::now(), counts)),
                    Ok(Err(e)) => {
                        tracing::warn!("reading the job counts for /metrics failed: {e:#}")
                    }
                    Err(_) => tracing::warn!("reading the job counts for /metrics took too long"),
                }
            }
            if let Some((_, counts)) = last.as_ref() {
                self.set_counts(counts);
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn set_counts(&self, counts: &Counts) {
        for state in [
            JobState::Queued,
            JobState::Running,
            JobState::Delivering,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            let n = counts
                .jobs
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.jobs
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(n);
            if state == JobState::Queued {
                self.queue_depth.set(n);
            }
        }
        self.unmatched.set(counts.unmatched_deliveries);
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Middleware around `POST /webhooks/github`: counts each request by event and by how it was answered.
pub async fn count_deliveries(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let event = event_label(headers.get("x-github-event").and_then(|v| v.to_str().ok()));
    let signed = headers.contains_key("x-hub-signature-256");
    let response = next.run(request).await;
    let result = match response.status() {
        StatusCode::ACCEPTED => "stored",
        StatusCode::OK if response.extensions().get::<Replayed>().is_some() => "replayed",
        StatusCode::OK => "duplicate",
        StatusCode::UNAUTHORIZED if !signed => "unsigned",
        StatusCode::UNAUTHORIZED => "bad_signature",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::REQUEST_TIMEOUT => "timed_out",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "bad_request",
    };
    global()
        .deliveries
        .get_or_create(&DeliveryLabels { event, result })
        .inc();
    response
}

/// Marks a webhook answer as a replay (the same signed body under a new delivery id), for
/// [`count_deliveries`].
#[derive(Clone, Copy, Debug)]
pub struct Replayed;

/// Runs a store call, timing it as `op` (`nightshift_store_seconds`).
pub async fn time_store<T>(op: &'static str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = call.await;
    global()
        .store
        .get_or_create(&OpLabels { op })
        .observe(started.elapsed().as_secs_f64());
    out
}

/// A worker claimed a job: on its first start (not a retry, a takeover or a delivery left to do), how long
/// it waited since it was queued.
pub fn job_started(config: &crate::config::Config, job: &crate::store::ClaimedJob, agent: &str) {
    if job.attempt != 1 || job.retries != 0 || job.result.is_some() {
        return;
    }
    let Some(started) = job.started_at else {
        return;
    };
    global()
        .queue_wait
        .get_or_create(&AgentLabels {
            agent: agent_label(config, agent),
        })
        .observe(((started - job.queued_at).max(0)) as f64 / 1000.0);
}

/// A job ended (`succeeded`, `failed` or `cancelled`) and its end was recorded.
pub fn job_ended(
    config: &crate::config::Config,
    job: &crate::store::ClaimedJob,
    agent: &str,
    outcome: &'static str,
) {
    let now = jiff::Timestamp::now().as_millisecond();
    let took = job.started_at.map_or(0, |s| (now - s).max(0));
    global()
        .job_duration
        .get_or_create(&JobLabels {
            agent: agent_label(config, agent),
            outcome,
        })
        .observe(took as f64 / 1000.0);
}

/// What an agent's run spent (every round), by profile.
pub fn agent_spent(config: &crate::config::Config, agent: &str, usage: &crate::store::Usage) {
    let agent = agent_label(config, agent);
    let m = global();
    for (kind, n) in [
        ("input", usage.input_tokens),
        ("cached_input", usage.cached_input_tokens),
        ("output", usage.output_tokens),
    ] {
        if let Some(n) = n {
            m.tokens
                .get_or_create(&TokenLabels {
                    agent: agent.clone(),
                    kind,
                })
                .inc_by(n);
        }
    }
    if let Some(cost) = usage.cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
        m.cost.get_or_create(&AgentLabels { agent }).inc_by(cost);
    }
}

/// GitHub answered a request with `status`; its `x-ratelimit-remaining`, when it has one, is the gauge's
/// for its `x-ratelimit-resource` (`core` when it says none).
pub fn github_answered(status: u16, headers: &HeaderMap) {
    let result = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let m = global();
    m.github.get_or_create(&ResultLabels { result }).inc();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(remaining) = header("x-ratelimit-remaining").and_then(|v| v.trim().parse().ok()) {
        let resource = match header("x-ratelimit-resource") {
            None => "core",
            Some(r) => RESOURCES
                .binary_search(&r.trim())
                .map_or("other", |i| RESOURCES[i]),
        };
        m.rate_limit
            .get_or_create(&ResourceLabels { resource })
            .set(remaining);
    }
}

/// A request to GitHub got no answer (the connection failed, or no answer in time).
pub fn github_no_answer() {
    global()
        .github
        .get_or_create(&ResultLabels {
            result: "no_answer",
        })
        .inc();
}

/// Who may read `/metrics`: anyone, or whoever sends the token.
#[derive(Clone)]
pub struct Access {
    pub token: Option<SecretString>,
}

impl Access {
    /// Whether the request's `Authorization` is `Bearer TOKEN` (compared in constant time), or no token is
    /// set.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(sent) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(sent.trim().as_bytes(), token.expose_secret().as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Both sides are hashed first, so the comparison takes as long whatever the lengths.
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The `/metrics` answer.
pub async fn scrape(access: &Access, store: &dyn Store, headers: &HeaderMap) -> Response {
    if !access.allows(headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a metrics token is required (Authorization: Bearer TOKEN)\n",
        )
            .into_response();
    }
    let text = global().render(store).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_or_hostile_event_name_is_other() {
        assert!(EVENTS.windows(2).all(|w| w[0] < w[1]), "EVENTS is sorted");
        assert!(
            RESOURCES.windows(2).all(|w| w[0] < w[1]),
            "RESOURCES is sorted"
        );
        assert_eq!(event_label(Some("pull_request")), "pull_request");
        assert_eq!(event_label(Some("issues")), "issues");
        assert_eq!(event_label(Some("Issues")), "other");
        assert_eq!(event_label(Some("x\"} 1\nevil_metric 9")), "other");
        assert_eq!(event_label(None), "other");
    }

    #[test]
    fn the_token_is_required_when_set() {
        let open = Access { token: None };
        assert!(open.allows(&HeaderMap::new()));
        let closed = Access {
            token: Some(SecretString::from("s3cret")),
        };
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(!closed.allows(&HeaderMap::new()));
        assert!(!closed.allows(&with("Bearer wrong")));
        assert!(!closed.allows(&with("Bearer s3cre")));
        assert!(!closed.allows(&with("s3cret")));
        assert!(closed.allows(&with("Bearer s3cret")));
    }
}
