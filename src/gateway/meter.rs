//! Reading what a model response spent, as it passes through: the Responses API's `response.completed`
//! (and `response.incomplete`/`response.failed`), the Messages API's `message_start` and `message_delta`,
//! and chat completions' `usage`, in server-sent events or in one JSON body. The bytes are looked at, never
//! changed; a response whose usage cannot be read counts as a request with no tokens.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The most bytes of a JSON (not streamed) response kept for reading its usage; a larger one passes through
/// unread. Streamed responses are read line by line and keep at most one line.
const MAX_JSON: usize = 16 << 20;
/// The longest server-sent event line kept; a longer one (a huge text delta) is skipped, not buffered.
const MAX_LINE: usize = 4 << 20;

/// Tokens one response spent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Every input token, cached or not (Anthropic's cache reads and writes included).
    pub input: u64,
    /// The part of `input` read from the provider's prompt cache.
    pub cached_input: u64,
    pub output: u64,
    /// The model the response says it came from.
    pub model: Option<String>,
}

/// Dollars per million tokens for one model.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached input; the input price when not given.
    #[serde(default)]
    pub cached_input: Option<f64>,
}

impl Price {
    pub fn cost(&self, tokens: &Tokens) -> f64 {
        let cached = tokens.cached_input.min(tokens.input);
        let fresh = tokens.input - cached;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + tokens.output as f64 * self.output)
            / 1_000_000.0
    }
}

/// The price table: a model's own entry, or else the longest entry it starts with followed by a dated or
/// numbered snapshot (`-` and digits: `gpt-5.5` prices `gpt-5.5-2026-01-15`). Any other suffix names
/// another model (`gpt-5.5-pro`, `gpt-5-mini`), which its own entry prices, or nothing does.
pub fn price_of<'a>(prices: &'a BTreeMap<String, Price>, model: &str) -> Option<&'a Price> {
    prices.get(model).or_else(|| {
        prices
            .iter()
            .filter(|(name, _)| {
                model.strip_prefix(name.as_str()).is_some_and(|rest| {
                    rest.starts_with('-') && rest.bytes().all(|b| b == b'-' || b.is_ascii_digit())
                })
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| price)
    })
}

/// Reads a response's usage from its bytes as they pass.
pub struct Meter {
    stream: bool,
    buffer: Vec<u8>,
    /// The current line is too long to keep: skip to its end.
    skipping: bool,
    tokens: Tokens,
    seen: bool,
}

impl Meter {
    /// `content_type` decides how the body is read: `text/event-stream` line by line, anything else as JSON.
    pub fn new(content_type: &str) -> Meter {
        Meter {
            stream: content_type.starts_with("text/event-stream"),
            buffer: Vec::new(),
            skipping: false,
            tokens: Tokens::default(),
            seen: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.stream {
            if self.buffer.len() + chunk.len() <= MAX_JSON {
                self.buffer.extend_from_slice(chunk);
            } else {
                self.skipping = true;
            }
            return;
        }
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if !self.skipping {
                self.buffer.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.buffer);
                self.line(&line);
            }
            self.skipping = false;
            rest = &rest[end + 1..];
        }
        if !self.skipping {
            if self.buffer.len() + rest.len() > MAX_LINE {
                self.buffer.clear();
                self.skipping = true;
            } else {
                self.buffer.extend_from_slice(rest);
            }
        }
    }

    /// The tokens the whole response spent, if it said.
    pub fn finish(mut self) -> Option<Tokens> {
        if self.stream {
            let line = std::mem::take(&mut self.buffer);
            if !self.skipping {
                self.line(&line);
            }
        } else if !self.skipping
            && let Ok(body) = serde_json::from_slice::<Value>(&self.buffer)
        {
            self.event(&body);
        }
        self.seen.then_some(self.tokens)
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Most events are text deltas: only those that mention usage are worth parsing.
        if !data.windows(7).any(|w| w == b"\"usage\"") {
            return;
        }
        if let Ok(event) = serde_json::from_slice::<Value>(data) {
            self.event(&event);
        }
    }

    /// One event (or a whole JSON body) of any of the three APIs.
    fn event(&mut self, event: &Value) {
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let model = |v: Option<&Value>| {
            v.and_then(|v| v.get("model"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match kind {
            // Responses, streamed: the final response carries the usage of the whole turn.
            "response.completed" | "response.incomplete" | "response.failed" => {
                let response = event.get("response");
                if let Some(usage) = response.and_then(|r| r.get("usage")) {
                    self.responses_usage(usage);
                    self.tokens.model = model(response).or(self.tokens.model.take());
                }
            }
            // Messages, streamed: input (and the first output count) at the start...
            "message_start" => {
                let message = event.get("message");
                if let Some(usage) = message.and_then(|m| m.get("usage")) {
                    self.messages_usage(usage);
                }
                self.tokens.model = model(message).or(self.tokens.model.take());
            }
            // ...and the output so far (a running total) in each delta.
            "message_delta" => {
                if let Some(usage) = event.get("usage") {
                    self.messages_usage(usage);
                }
            }
            // Messages, not streamed.
            "message" => {
                if let Some(usage) = event.get("usage") {
                    self.messages_usage(usage);
                }
                self.tokens.model = model(Some(event)).or(self.tokens.model.take());
            }
            _ => {
                let Some(usage) = event.get("usage").filter(|u| u.is_object()) else {
                    return;
                };
                if usage.get("prompt_tokens").is_some() {
                    // Chat completions: the answer, or a stream's last chunk (include_usage).
                    let n = |p: &str| usage.pointer(p).and_then(Value::as_u64).unwrap_or(0);
                    self.tokens.input = n("/prompt_tokens");
                    self.tokens.cached_input = n("/prompt_tokens_details/cached_tokens");
                    self.tokens.output = n("/completion_tokens");
                    self.seen = true;
                } else if usage.get("input_tokens").is_some() {
                    // Responses, not streamed.
                    self.responses_usage(usage);
                }
                self.tokens.model = model(Some(event)).or(self.tokens.model.take());
            }
        }
    }

    fn responses_usage(&mut self, usage: &Value) {
        let n = |p: &str| usage.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        self.tokens.input = n("/input_tokens");
        self.tokens.cached_input = n("/input_tokens_details/cached_tokens");
        self.tokens.output = n("/output_tokens");
        self.seen = true;
    }

    /// Anthropic counts cache reads and writes apart from `input_tokens`; a later event repeats or
    /// raises a count, never lowers it, so the largest seen is kept.
    fn messages_usage(&mut self, usage: &Value) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        let reads = n("cache_read_input_tokens");
        if n("input_tokens").is_some() || reads.is_some() {
            let input = n("input_tokens").unwrap_or(0)
                + reads.unwrap_or(0)
                + n("cache_creation_input_tokens").unwrap_or(0);
            self.tokens.input = self.tokens.input.max(input);
            self.tokens.cached_input = self.tokens.cached_input.max(reads.unwrap_or(0));
        }
        if let Some(output) = n("output_tokens") {
            self.tokens.output = self.tokens.output.max(output);
        }
        self.seen = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in chunks of every size from 1 byte up, so no event is read only when whole in one chunk.
    fn read_in_pieces(content_type: &str, body: &str) -> Option<Tokens> {
        let mut results = Vec::new();
        for size in [1, 2, 7, 64, body.len().max(1)] {
            let mut meter = Meter::new(content_type);
            for chunk in body.as_bytes().chunks(size) {
                meter.feed(chunk);
            }
            results.push(meter.finish());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        results.remove(0)
    }

    #[test]
    fn responses_usage_comes_from_the_completed_event() {
        let body = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\n\
                    event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"model\":\"gpt-5.5-2026\",\
                    \"usage\":{\"input_tokens\":1000,\"input_tokens_details\":{\"cached_tokens\":200},\"output_tokens\":50}}}\r\n\r\n";
        let tokens = read_in_pieces("text/event-stream; charset=utf-8", body).unwrap();
        assert_eq!(
            tokens,
            Tokens {
                input: 1000,
                cached_input: 200,
                output: 50,
                model: Some("gpt-5.5-2026".into())
            }
        );
    }

    #[test]
    fn messages_usage_adds_cache_counts_and_takes_the_last_output_total() {
        let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\
                    \"usage\":{\"input_tokens\":300,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":5,\"output_tokens\":1}}}\n\n\
                    event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"usage\"}}\n\n\
                    event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20}}\n\n";
        let tokens = read_in_pieces("text/event-stream", body).unwrap();
        assert_eq!(
            (tokens.input, tokens.cached_input, tokens.output),
            (405, 100, 20)
        );
        assert_eq!(tokens.model.as_deref(), Some("claude-x"));
        let json =
            r#"{"type":"message","model":"claude-y","usage":{"input_tokens":7,"output_tokens":3}}"#;
        let tokens = read_in_pieces("application/json", json).unwrap();
        assert_eq!((tokens.input, tokens.output), (7, 3));
    }

    #[test]
    fn chat_completions_usage_streamed_or_not() {
        let json = r#"{"model":"m","choices":[],"usage":{"prompt_tokens":120,"completion_tokens":30,"prompt_tokens_details":{"cached_tokens":20}}}"#;
        let tokens = read_in_pieces("application/json", json).unwrap();
        assert_eq!(
            (tokens.input, tokens.cached_input, tokens.output),
            (120, 20, 30)
        );
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        let tokens = read_in_pieces("text/event-stream", stream).unwrap();
        assert_eq!((tokens.input, tokens.output), (9, 4));
    }

    #[test]
    fn a_response_without_usage_reads_as_none() {
        assert_eq!(read_in_pieces("application/json", "not json"), None);
        assert_eq!(read_in_pieces("text/event-stream", "data: {}\n\n"), None);
        assert_eq!(read_in_pieces("text/event-stream", ""), None);
    }

    #[test]
    fn prices_match_exactly_or_by_dated_prefix_and_cost_cached_input_apart() {
        let mut prices = BTreeMap::new();
        let gpt = Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
        };
        prices.insert("gpt-5".to_owned(), Price { input: 1.0, ..gpt });
        prices.insert("gpt-5.5".to_owned(), gpt);
        assert_eq!(price_of(&prices, "gpt-5.5"), Some(&gpt));
        assert_eq!(price_of(&prices, "gpt-5.5-2026-01-15"), Some(&gpt));
        assert_eq!(price_of(&prices, "gpt-5.55"), None);
        // Another model, not a snapshot: an agent asking for it is not charged the cheaper one's price.
        assert_eq!(price_of(&prices, "gpt-5.5-pro"), None);
        assert_eq!(price_of(&prices, "gpt-5-pro-2026-01-15"), None);
        assert_eq!(price_of(&prices, "claude"), None);
        let tokens = Tokens {
            input: 1_000_000,
            cached_input: 500_000,
            output: 100_000,
            model: None,
        };
        let cost = gpt.cost(&tokens);
        assert!((cost - (1.5 + 0.15 + 1.5)).abs() < 1e-9, "{cost}");
    }
}
