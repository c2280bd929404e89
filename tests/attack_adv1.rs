//! Attacks by the adversary on what issue 8 built (the box, the gateway, nightshift's git after the agent),
//! each performed and shown contained.
//!
//! The gateway tests run it in-process against a recording upstream, as an agent holding a job token would
//! use it.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use common::gateway::open;
use nightshift::config::Config;
use nightshift::gateway::Gateway;
use serde_json::Value;

const REAL_KEY: &str = "sk-real-adv1-secret";

/// The bodies the upstream model received.
type Bodies = Arc<Mutex<Vec<Bytes>>>;

async fn upstream_handler(State(bodies): State<Bodies>, request: Request) -> Response {
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap();
    bodies.lock().unwrap().push(body);
    let mut response = Response::new(Body::from(
        r#"{"id":"r1","model":"gpt-5.5","usage":{"input_tokens":10,"output_tokens":5}}"#,
    ));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn start_upstream(bodies: Bodies) -> String {
    let app = Router::new().fallback(upstream_handler).with_state(bodies);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The gateway in-process: `capped` has a dollar limit, `free` none; only `gpt-5.5` has a price.
async fn gateway(upstream: &str) -> (tempfile::TempDir, Config, Arc<Gateway>) {
    let agents = format!(
        "  capped: {{codex: {{model: gpt-5.5, base_url: '{upstream}/v1', api_key_env: REAL}}, max_cost_usd: 5}}\n\
         \x20 free: {{codex: {{model: gpt-5.5, base_url: '{upstream}/v1', api_key_env: REAL}}}}\n"
    );
    common::gateway::start(&agents, REAL_KEY).await
}

/// Posts `body` as it is (raw bytes) to the gateway's Responses route with `token`.
async fn post_raw(gateway: &Gateway, token: &str, body: &'static str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/responses", gateway.tcp_addr()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A prompt-injected agent under a dollar limit asks for a model the price table does not know (or one
/// that only shares a priced model's prefix, or no model at all, or two `model` keys): its tokens would be
/// metered but never priced, so no dollar limit would ever stop it. Each is refused before anything reaches
/// the provider, the job records why, and what does go upstream names the model the gateway priced.
#[tokio::test]
async fn an_agent_cannot_spend_past_a_dollar_limit_with_a_model_the_table_does_not_price() {
    let bodies: Bodies = Default::default();
    let upstream = start_upstream(bodies.clone()).await;
    let (_dir, config, gateway) = gateway(&upstream).await;
    let capped = open(&gateway, &config, "capped", 1).await;

    for (body, why) in [
        (
            r#"{"model":"gpt-5.5-pro","input":"hi"}"#,
            "a model sharing a priced one's prefix",
        ),
        (r#"{"model":"o9-ultra","input":"hi"}"#, "an unpriced model"),
        (r#"{"input":"hi"}"#, "no model"),
        (r#"{"model":42,"input":"hi"}"#, "a model that is not a name"),
        (
            r#"{"model":"gpt-5.5","model":"gpt-5.5-pro","input":"hi"}"#,
            "two model keys, the unpriced last",
        ),
        (
            r#"{"model":"gpt-5.5-pro","model":"gpt-5.5","input":"hi"}"#,
            "two model keys, the priced last",
        ),
        ("not json", "a body the gateway cannot read"),
    ] {
        let (status, text) = post_raw(&gateway, capped.token(), body).await;
        assert_eq!(status, 400, "{why}: {text}");
        assert!(
            text.contains("gateway.prices")
                || text.contains("names no model")
                || text.contains("not a JSON object the gateway can read"),
            "{why}: {text}"
        );
    }
    assert!(
        bodies.lock().unwrap().is_empty(),
        "a refused request reached the provider"
    );
    let refusal = capped.refusal().expect("the job records why");
    assert!(refusal.contains("gpt-5.5-pro"), "{refusal}");

    // A priced model goes through and is charged.
    let (status, text) = post_raw(
        &gateway,
        capped.token(),
        r#"{"model":"gpt-5.5","input":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let sent = bodies.lock().unwrap().pop().expect("forwarded");
    let sent: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(sent["model"], "gpt-5.5");
    assert!(capped.settle().await.cost_usd.unwrap() > 0.0);

    // Without a dollar limit an unpriced model is metered in tokens, as before.
    let free = open(&gateway, &config, "free", 2).await;
    let (status, text) = post_raw(
        &gateway,
        free.token(),
        r#"{"model":"o9-ultra","input":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

/// Sends one request on a fresh connection to a unix socket; returns the status line's code, or None when
/// the connection was closed without an answer.
async fn request_on(socket: &std::path::Path, token: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let body = r#"{"model":"gpt-5.5","input":"hi"}"#;
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Opens a connection to `socket` and checks it is served (a `HEAD /` answered), keeping it open.
async fn hold(socket: &std::path::Path) -> Option<tokio::net::UnixStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    answer.starts_with(b"HTTP/1.1 200").then_some(stream)
}

/// A prompt-injected agent opens connection after connection to the gateway through its box's forwarder
/// (no token is needed to connect) and holds them idle. When every box reached one shared socket, 1024 such
/// connections cut every other job off its model for as long as the job ran. Each job now has a socket of
/// its own: the hoarder fills only its own, another job's requests go through, and the hoarder's socket is
/// gone with its job.
#[tokio::test]
async fn a_job_holding_every_connection_it_can_does_not_cut_another_job_off_its_model() {
    use nightshift::gateway::listen::JOB_CONNECTIONS;
    let bodies: Bodies = Default::default();
    let upstream = start_upstream(bodies.clone()).await;
    let (_dir, config, gateway) = gateway(&upstream).await;
    let hoarder = open(&gateway, &config, "free", 1).await;
    let victim = open(&gateway, &config, "free", 2).await;
    let hoarder_socket = hoarder.model_access(true).socket;
    let victim_socket = victim.model_access(true).socket;
    assert_ne!(hoarder_socket, victim_socket, "each job has its own socket");

    let mut held = Vec::new();
    for n in 0..JOB_CONNECTIONS {
        held.push(
            hold(&hoarder_socket)
                .await
                .unwrap_or_else(|| panic!("connection {n} was served")),
        );
    }
    assert!(
        hold(&hoarder_socket).await.is_none(),
        "the hoarder gets no more than its share"
    );
    assert_eq!(
        request_on(&hoarder_socket, hoarder.token()).await,
        None,
        "not even with its token"
    );

    // The other job's model requests go through all the while.
    for _ in 0..3 {
        assert_eq!(request_on(&victim_socket, victim.token()).await, Some(200));
    }
    assert_eq!(bodies.lock().unwrap().len(), 3);

    // The hoarder's job ends: its socket is gone, whatever it still holds.
    drop(hoarder);
    assert!(
        !hoarder_socket.exists(),
        "the ended job's socket is removed"
    );
    assert!(
        tokio::net::UnixStream::connect(&hoarder_socket)
            .await
            .is_err()
    );
    assert_eq!(request_on(&victim_socket, victim.token()).await, Some(200));
    drop(held);
}

/// The most memory this process has held at once (VmHWM), in bytes.
fn peak_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// An agent sends the largest body the gateway takes, made of tiny JSON values (`[[],[],...]`, 3 bytes
/// each): read into a JSON tree, each is a 32-byte value, ten times the body, and a job may have four such
/// requests open at once. The gateway reads only the fields it needs: the service's memory grows by about
/// the body, not by its tree.
#[tokio::test]
async fn a_body_of_tiny_json_values_does_not_grow_the_service_tenfold() {
    let bodies: Bodies = Default::default();
    let upstream = start_upstream(bodies.clone()).await;
    let (_dir, config, gateway) = gateway(&upstream).await;
    let job = open(&gateway, &config, "free", 3).await;
    let mut body = String::with_capacity(32 << 20);
    body.push_str(r#"{"model":"gpt-5.5","input":["#);
    while body.len() < (32 << 20) - 64 {
        body.push_str("[],");
    }
    body.push_str("[]]}");
    let size = body.len() as u64;
    let before = peak_memory();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/responses", gateway.tcp_addr()))
        .bearer_auth(job.token())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let _ = response.text().await.unwrap();
    let grown = peak_memory().saturating_sub(before);
    // The body is held by the client, the gateway and the recording upstream: a few times its size. Its
    // tree alone would be ten.
    assert!(
        grown < 6 * size,
        "the service grew by {} MiB for a {} MiB body",
        grown >> 20,
        size >> 20
    );
    assert_eq!(bodies.lock().unwrap().len(), 1);
}

/// A streamed chat completion reports its usage only when asked: the gateway asks, and an agent that
/// declines (or names `stream` twice, so the provider may read the other) is refused, not left unmetered.
#[tokio::test]
async fn a_streamed_chat_completion_cannot_decline_its_usage() {
    let bodies: Bodies = Default::default();
    let upstream = start_upstream(bodies.clone()).await;
    let (_dir, config, gateway) = gateway(&upstream).await;
    let job = open(&gateway, &config, "free", 4).await;
    let post = |body: &'static str| {
        let url = format!("http://{}/v1/chat/completions", gateway.tcp_addr());
        let token = job.token().to_owned();
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let (status, text) = post("{\"model\":\"gpt-5.5\",\"stream\":true,\"messages\":[]}\n ").await;
    assert_eq!(status, 200, "{text}");
    let sent: Value = serde_json::from_slice(&bodies.lock().unwrap().pop().unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert_eq!(sent["messages"], serde_json::json!([]));

    for body in [
        r#"{"model":"gpt-5.5","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#,
        r#"{"model":"gpt-5.5","stream":true,"stream_options":{},"messages":[]}"#,
        r#"{"model":"gpt-5.5","stream":false,"stream":true,"messages":[]}"#,
    ] {
        let (status, text) = post(body).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    assert!(bodies.lock().unwrap().is_empty());
}
