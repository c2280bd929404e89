//! A scripted model server on loopback, speaking the three wire formats nightshift's agents use: the
//! OpenAI Responses API (Codex CLI), the Anthropic Messages API (Claude Code), and OpenAI chat completions
//! (the `openai` backend). Each request picks its scripted step from the conversation so far (how many tool
//! results or assistant turns it carries), the way a real model continues a conversation; every request is
//! recorded for the test to inspect.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};

/// One scripted model turn.
#[derive(Clone, Debug)]
pub enum Step {
    /// A final answer.
    Text(String),
    /// Codex: an `apply_patch` call with this patch.
    Patch(String),
    /// Claude Code: a tool call.
    Tool { name: String, input: Value },
    /// Codex: an `exec_command` call running this shell command.
    Exec(String),
}

/// A scripted chat completions reply.
#[derive(Clone, Debug)]
pub enum ChatReply {
    /// An error status, with an optional Retry-After (seconds).
    Status(u16, Option<u64>),
    /// A 200 with this message and token usage (prompt, completion).
    Answer(String, u64, u64),
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Script {
    steps: Vec<Step>,
    chat: Vec<ChatReply>,
    requests: Vec<Recorded>,
}

type Shared = Arc<Mutex<Script>>;

pub struct ModelServer {
    pub url: String,
    script: Shared,
}

impl ModelServer {
    /// A server for an agent CLI that plays `steps` in order.
    pub async fn agent(steps: Vec<Step>) -> ModelServer {
        Self::start(Script {
            steps,
            ..Script::default()
        })
        .await
    }

    /// A chat completions server that answers with `replies`, one per request.
    pub async fn chat(replies: Vec<ChatReply>) -> ModelServer {
        Self::start(Script {
            chat: replies,
            ..Script::default()
        })
        .await
    }

    async fn start(script: Script) -> ModelServer {
        let script: Shared = Arc::new(Mutex::new(script));
        let app = Router::new()
            .route("/v1/responses", post(responses))
            .route("/v1/messages", post(messages))
            .route("/v1/chat/completions", post(chat))
            // Claude Code's warm-up HEAD /, and anything else: recorded, answered 200 empty.
            .fallback(any(other))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ModelServer {
            url: format!("http://{addr}"),
            script,
        }
    }

    /// The requests so far (model requests only: POSTs).
    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().requests.clone()
    }
}

fn record(script: &Shared, path: &str, headers: &HeaderMap, body: &Bytes) -> Value {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    script.lock().unwrap().requests.push(Recorded {
        path: path.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: value.clone(),
    });
    value
}

fn sse(events: &[(&str, Value)]) -> Response {
    let mut text = String::new();
    for (name, data) in events {
        text.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    ([(header::CONTENT_TYPE, "text/event-stream")], text).into_response()
}

fn step(script: &Shared, index: usize) -> Step {
    let script = script.lock().unwrap();
    script
        .steps
        .get(index)
        .cloned()
        .unwrap_or_else(|| Step::Text("(the script has no more steps)".into()))
}

/// The Responses API, streamed: the step is the number of tool outputs and of the model's own answers in
/// the input so far (a resumed session carries the answers of the rounds before).
async fn responses(State(script): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = record(&script, "/v1/responses", &headers, &body);
    let done = request["input"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|i| {
                matches!(
                    i["type"].as_str(),
                    Some("function_call_output" | "custom_tool_call_output")
                ) || (i["type"] == "message" && i["role"] == "assistant")
            })
            .count()
    });
    let item = match step(&script, done) {
        Step::Text(text) => json!({
            "type": "message", "role": "assistant", "id": format!("msg_{done}"),
            "content": [{"type": "output_text", "text": text, "annotations": []}]
        }),
        Step::Patch(patch) => json!({
            "type": "custom_tool_call", "id": format!("ctc_{done}"), "call_id": format!("call_{done}"),
            "name": "apply_patch", "input": patch, "status": "completed"
        }),
        Step::Exec(cmd) => json!({
            "type": "function_call", "id": format!("fc_{done}"), "call_id": format!("call_{done}"),
            "name": "exec_command", "arguments": json!({"cmd": cmd}).to_string(), "status": "completed"
        }),
        Step::Tool { .. } => panic!("a tool step is for Claude Code"),
    };
    sse(&[
        (
            "response.output_item.done",
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        ),
        (
            "response.completed",
            json!({"type": "response.completed", "response": {
                "id": format!("resp_{done}"),
                "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 200},
                          "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": 1050}
            }}),
        ),
    ])
}

/// The Messages API, streamed: the step is the number of assistant turns so far.
async fn messages(State(script): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = record(&script, "/v1/messages", &headers, &body);
    let turn = request["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count());
    let model = request["model"].as_str().unwrap_or("claude").to_owned();
    let (block, deltas, stop) = match step(&script, turn) {
        Step::Text(text) => (
            json!({"type": "text", "text": ""}),
            vec![json!({"type": "text_delta", "text": text})],
            "end_turn",
        ),
        Step::Tool { name, input } => (
            json!({"type": "tool_use", "id": format!("toolu_{turn}"), "name": name, "input": {}}),
            vec![json!({"type": "input_json_delta", "partial_json": input.to_string()})],
            "tool_use",
        ),
        Step::Patch(_) | Step::Exec(_) => panic!("a patch or exec step is for Codex"),
    };
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": format!("msg_{turn}"), "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 300, "cache_read_input_tokens": 100,
                          "cache_creation_input_tokens": 0, "output_tokens": 1}
            }}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
    ];
    for delta in deltas {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    events.extend([
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                   "usage": {"output_tokens": 20}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]);
    sse(&events)
}

/// Chat completions: the reply is the next one in the script.
async fn chat(State(script): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = record(&script, "/v1/chat/completions", &headers, &body);
    let index = script.lock().unwrap().requests.len() - 1;
    let reply = script.lock().unwrap().chat.get(index).cloned();
    match reply {
        Some(ChatReply::Status(code, retry_after)) => {
            let mut response = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({"error": {"message": format!("scripted {code}"), "type": "server_error"}})),
            )
                .into_response();
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, after.to_string().parse().unwrap());
            }
            response
        }
        Some(ChatReply::Answer(text, prompt, completion)) => axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
            "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}
        }))
        .into_response(),
        None => (StatusCode::GONE, "the script has no more replies").into_response(),
    }
}

async fn other(headers: HeaderMap) -> StatusCode {
    let _ = headers;
    StatusCode::OK
}
