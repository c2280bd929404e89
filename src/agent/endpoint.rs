//! An OpenAI-compatible chat completions endpoint as an agent, for jobs that need no tools: OpenAI itself,
//! and local servers such as Ollama, vLLM or llama.cpp (all speak `POST {base_url}/chat/completions`).
//! Rate limits (429) and server errors (5xx, dropped connections) are retried with backoff, honouring
//! `Retry-After`; other errors fail the job at once with the server's message. Requests go through
//! nightshift's model gateway ([`crate::gateway`]), which adds the key and records the usage.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{AgentJob, AgentOutcome, Turn};
use crate::config::EndpointOptions;
use crate::store::{LogStream, Usage};

/// How many requests a job makes at most before it gives up on a failing endpoint.
pub const MAX_ATTEMPTS: u32 = 5;

/// The wait before retry `attempt` (1-based) when the server does not say: 1, 2, 4, 8 s, at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << (attempt - 1).min(5)).min(Duration::from_secs(30))
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        crate::install_tls_provider();
        reqwest::Client::builder()
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("the HTTP client builds")
    })
}

/// One request's result: an answer, a failure worth retrying (with the server's wait, if it gave one), or a
/// failure that retrying will not fix.
enum Attempt {
    Answer(Value),
    Retry(String, Option<Duration>),
    Fail(String),
}

pub async fn run(options: &EndpointOptions, job: AgentJob<'_>) -> Result<AgentOutcome> {
    // Through nightshift's model gateway, like the agent CLIs: it adds the real key (if the profile has
    // one), meters the answer and holds the job's limits.
    let model = job.model_access()?;
    let key = Some(model.token.as_str());
    let body = request_body(options, job.history, job.prompt, job.profile.max_tokens);
    let url = format!("{}/v1/chat/completions", model.url);
    let deadline = Instant::now() + job.timeout;
    let log = |line: String| {
        let _ = job.log.send((LogStream::Stdout, line));
    };

    let mut attempt = 0;
    let answer = loop {
        attempt += 1;
        let request = send(&url, key, &body);
        let result = match tokio::time::timeout_at(deadline, request).await {
            Ok(result) => result,
            Err(_) => return Ok(timed_out(&job, attempt)),
        };
        let (why, wait) = match result {
            Attempt::Answer(answer) => break answer,
            Attempt::Fail(why) => {
                return Ok(failed(
                    format!("the model endpoint refused the request: {why}"),
                    attempt,
                ));
            }
            Attempt::Retry(why, wait) => (why, wait),
        };
        if attempt >= MAX_ATTEMPTS {
            return Ok(failed(
                format!("the model endpoint failed {attempt} times; the last: {why}"),
                attempt,
            ));
        }
        let wait = wait
            .unwrap_or_else(|| backoff(attempt))
            .min(Duration::from_secs(60));
        if Instant::now() + wait >= deadline {
            return Ok(timed_out(&job, attempt));
        }
        log(format!(
            "request {attempt} failed ({why}); retrying in {}",
            humantime::format_duration(wait)
        ));
        tokio::time::sleep(wait).await;
    };

    let choice = answer.pointer("/choices/0");
    let content = choice
        .and_then(|c| c.pointer("/message/content"))
        .and_then(Value::as_str);
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let usage = answer.get("usage");
    let tokens = |key: &str| usage.and_then(|u| u.pointer(key)).and_then(Value::as_u64);
    let usage = Usage {
        model: answer
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| Some(options.model.clone())),
        turns: Some(1),
        input_tokens: tokens("/prompt_tokens"),
        cached_input_tokens: tokens("/prompt_tokens_details/cached_tokens"),
        output_tokens: tokens("/completion_tokens"),
        cost_usd: None,
    };
    if finish == "length" {
        log("the answer stopped at the token limit (finish_reason: length)".to_owned());
    }
    let Some(content) = content.filter(|c| !c.trim().is_empty()) else {
        return Ok(AgentOutcome {
            usage: Some(usage),
            ..failed(
                format!(
                    "the model endpoint answered without a message (finish_reason: {finish:?})"
                ),
                attempt,
            )
        });
    };
    let (message, truncated) = super::cut_at(content, job.max_output);
    Ok(AgentOutcome {
        ended: format!("answered after {attempt} request(s)"),
        failure: None,
        message: message.to_owned(),
        truncated,
        usage: Some(usage),
        session: None,
    })
}

/// The chat completions request: the system message, the rounds before (`history`: each prompt as a user
/// message, each answer as an assistant message), then `prompt`. The token limit is `max_completion_tokens` for OpenAI itself (its newer
/// models refuse `max_tokens`) and `max_tokens` elsewhere (what Ollama, vLLM and llama.cpp read).
pub fn request_body(
    options: &EndpointOptions,
    history: &[Turn],
    prompt: &str,
    max_tokens: Option<u32>,
) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &options.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for turn in history {
        messages.push(json!({"role": "user", "content": turn.prompt}));
        messages.push(json!({"role": "assistant", "content": turn.answer}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut body = json!({"model": options.model, "messages": messages, "stream": false});
    if let Some(max) = max_tokens {
        let field = if options.base_url.starts_with(crate::config::OPENAI_BASE_URL) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[field] = json!(max);
    }
    if let Some(t) = options.temperature {
        body["temperature"] = json!(t);
    }
    body
}

async fn send(url: &str, key: Option<&str>, body: &Value) -> Attempt {
    let mut request = client().post(url).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        // Connection refused or reset, or the server went away mid-answer: worth another try.
        Err(e) => return Attempt::Retry(error_chain(&e), None),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => return Attempt::Retry(error_chain(&e), None),
    };
    if status.is_success() {
        return match serde_json::from_str(&text) {
            Ok(value) => Attempt::Answer(value),
            Err(e) => Attempt::Fail(format!("HTTP {status} with a body that is not JSON ({e})")),
        };
    }
    // OpenAI and its imitators put the reason in {"error": {"message": ...}}.
    let reason = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.chars().take(300).collect());
    let why = format!("HTTP {status}: {reason}");
    if status.as_u16() == 429 || status.is_server_error() {
        Attempt::Retry(why, retry_after)
    } else {
        Attempt::Fail(why)
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn failed(why: String, attempts: u32) -> AgentOutcome {
    AgentOutcome {
        ended: format!("failed after {attempts} request(s)"),
        failure: Some(why),
        message: String::new(),
        truncated: false,
        usage: None,
        session: None,
    }
}

fn timed_out(job: &AgentJob<'_>, attempts: u32) -> AgentOutcome {
    AgentOutcome {
        ended: format!(
            "timed out ({}) after {attempts} request(s)",
            humantime::format_duration(job.timeout)
        ),
        ..failed(
            format!(
                "the agent ran out of time after {}",
                humantime::format_duration(job.timeout)
            ),
            attempts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_limit_is_named_as_the_endpoint_expects() {
        let mut options = EndpointOptions {
            model: "m".into(),
            base_url: "http://localhost:11434/v1".into(),
            api_key_env: None,
            system: Some("Be brief.".into()),
            temperature: Some(0.2),
        };
        let body = request_body(&options, &[], "hi", Some(100));
        assert_eq!(
            body,
            json!({"model": "m", "stream": false, "max_tokens": 100, "temperature": 0.2,
                   "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
        );
        options.base_url = crate::config::OPENAI_BASE_URL.into();
        let body = request_body(&options, &[], "hi", Some(100));
        assert_eq!(body["max_completion_tokens"], 100);
        assert!(body.get("max_tokens").is_none());
    }

    /// A follow-up round sends the conversation so far, then the new prompt, in order.
    #[test]
    fn a_follow_up_round_sends_the_rounds_before_it() {
        let options = EndpointOptions {
            model: "m".into(),
            base_url: "http://localhost:11434/v1".into(),
            api_key_env: None,
            system: Some("Be brief.".into()),
            temperature: None,
        };
        let history = [Turn {
            prompt: "Summarize.".into(),
            answer: "A summary.".into(),
        }];
        let body = request_body(&options, &history, "The check failed: shorter.", None);
        assert_eq!(
            body["messages"],
            json!([{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Summarize."},
                   {"role": "assistant", "content": "A summary."},
                   {"role": "user", "content": "The check failed: shorter."}])
        );
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let waits: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
