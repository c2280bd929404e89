//! The one way nightshift calls GitHub's REST API, and the one retry layer.
//!
//! octocrab signs the requests (App JWT, installation tokens) and carries them with connect and read
//! timeouts; it retries nothing (its `retry` feature is off). Here:
//!
//! - **Reads** (`GET`) and **idempotent writes** (`PATCH`, `PUT`: the same body twice leaves the same state)
//!   are tried again on transient failures (server errors, rate limits, timeouts, dropped connections), with
//!   backoff, honouring `Retry-After` and `x-ratelimit-reset`.
//! - **Creates** (`POST`) are sent once. When GitHub said it did not apply the request (a rate limit answers
//!   before anything is done) the create is tried again after the wait it asked for; when the answer leaves
//!   it open whether the create happened (a 5xx, a timeout, a dropped connection) the error says
//!   [`GhErrorKind::Unknown`], and the caller looks for what it may have created (its hidden marker) before
//!   it creates again (`sink::once`).
//!
//! Every error is a [`GhError`] that says whether trying later can help: the outbox puts a job back to wait
//! for transient ones and fails it at once for the rest.

use std::time::Duration;

use octocrab::Octocrab;
use serde_json::Value;

/// How calls to GitHub are made.
#[derive(Clone, Debug)]
pub struct CallSettings {
    /// The API's base URL (`https://api.github.com`, or GHES's `https://HOST/api/v3`).
    pub api_url: String,
    /// The longest one call may take, end to end (connect, send, answer).
    pub timeout: Duration,
    /// The longest nightshift waits inside one call for GitHub to be ready again (a `Retry-After`, a rate
    /// limit's reset); a longer wait is left to the outbox, which puts the job back until then.
    pub max_wait: Duration,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            api_url: crate::config::DEFAULT_API_URL.to_owned(),
            timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// What kind of failure a call met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GhErrorKind {
    /// Nothing was done, and trying later can work (a rate limit, an outage, a read that failed).
    Transient,
    /// A create whose request may or may not have been applied (a server error, a timeout, a dropped
    /// connection): look for what it would have created before creating again. Trying later can work.
    Unknown,
    /// GitHub refused the request (a 4xx about the request itself): trying again gives the same answer.
    Refused,
}

/// A failed call to GitHub.
#[derive(Clone, Debug)]
pub struct GhError {
    pub what: String,
    pub kind: GhErrorKind,
    /// The HTTP status, when GitHub answered.
    pub status: Option<u16>,
    /// What GitHub (or the connection) said.
    pub message: String,
    /// How long GitHub asked to wait (`Retry-After`, or until `x-ratelimit-reset`).
    pub retry_after: Option<Duration>,
}

impl GhError {
    /// True when trying later can work.
    pub fn is_transient(&self) -> bool {
        self.kind != GhErrorKind::Refused
    }
}

impl std::fmt::Display for GhError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(
                f,
                "{}: GitHub answered {status}: {}",
                self.what, self.message
            ),
            None => write!(f, "{}: {}", self.what, self.message),
        }
    }
}

impl std::error::Error for GhError {}

/// The first [`GhError`] in an error's chain.
pub fn gh_error(e: &anyhow::Error) -> Option<&GhError> {
    e.chain().find_map(|c| c.downcast_ref::<GhError>())
}

/// How a call may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    /// A POST whose repetition is harmless (minting a token, adding a reaction or labels).
    PostRepeatable,
    Patch,
    /// A PATCH whose repetition is not harmless (a check run's annotations are appended on each).
    PatchOnce,
    Put,
}

impl Verb {
    /// Whether sending the same request twice is harmless.
    fn idempotent(self) -> bool {
        !matches!(self, Verb::Post | Verb::PatchOnce)
    }
}

/// How many times one call is sent at most.
const TRIES: u32 = 4;

/// A GET of every page of a list (`per_page=100`, following GitHub's `Link: <…>; rel="next"` on the same
/// API host only), up to `max_items` items.
pub async fn get_all(
    api: &Octocrab,
    settings: &CallSettings,
    what: &str,
    route: &str,
    max_items: usize,
) -> Result<Vec<Value>, GhError> {
    let sep = if route.contains('?') { '&' } else { '?' };
    let mut next = Some(format!("{route}{sep}per_page=100"));
    let mut items = Vec::new();
    // A list that never ends (empty or thin pages, each naming a next one) stops too.
    let mut pages = max_items.div_ceil(100) + 1;
    while let Some(route) = next.take() {
        pages = match pages.checked_sub(1) {
            Some(left) if left > 0 => left,
            _ => break,
        };
        let (page, link) = call(api, settings, what, Verb::Get, &route, None).await?;
        let Value::Array(page) = page else {
            return Err(GhError {
                what: what.to_owned(),
                kind: GhErrorKind::Refused,
                status: None,
                message: "GitHub answered something other than a list".into(),
                retry_after: None,
            });
        };
        if page.is_empty() {
            break;
        }
        items.extend(page);
        if items.len() >= max_items {
            items.truncate(max_items);
            break;
        }
        next = link.and_then(|l| next_page(&l, &settings.api_url));
    }
    Ok(items)
}

/// One GET of one page of a list: the answer, and the route of the next page when GitHub's `Link` header
/// names one on the same API host (lists paginated by cursor, or lists wrapped in an object).
pub async fn get_page(
    api: &Octocrab,
    settings: &CallSettings,
    what: &str,
    route: &str,
) -> Result<(Value, Option<String>), GhError> {
    let (page, link) = call(api, settings, what, Verb::Get, route, None).await?;
    Ok((page, link.and_then(|l| next_page(&l, &settings.api_url))))
}

/// One call as [`Verb`] says: a `Post` is sent once unless GitHub said it did nothing (see the module's
/// notes); the others are tried again on transient failures.
pub async fn request(
    api: &Octocrab,
    settings: &CallSettings,
    what: &str,
    verb: Verb,
    route: &str,
    body: Option<&Value>,
) -> Result<Value, GhError> {
    call(api, settings, what, verb, route, body)
        .await
        .map(|(v, _)| v)
}

/// One call with its retries. Returns the JSON answer and the `Link` header.
async fn call(
    api: &Octocrab,
    settings: &CallSettings,
    what: &str,
    verb: Verb,
    route: &str,
    body: Option<&Value>,
) -> Result<(Value, Option<String>), GhError> {
    let mut backoff = Duration::from_millis(500);
    let mut tries = 0;
    loop {
        tries += 1;
        let sent = tokio::time::timeout(settings.timeout, send(api, verb, route, body)).await;
        if sent.is_err() {
            crate::metrics::github_no_answer();
        }
        let error = match sent {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(mut e)) => {
                e.what = what.to_owned();
                e
            }
            Err(_) => GhError {
                what: what.to_owned(),
                kind: if verb.idempotent() {
                    GhErrorKind::Transient
                } else {
                    GhErrorKind::Unknown
                },
                status: None,
                message: format!(
                    "no answer within {}",
                    humantime::format_duration(settings.timeout)
                ),
                retry_after: None,
            },
        };
        // A create whose fate is unknown is never sent again here: the caller looks first.
        let again = match error.kind {
            GhErrorKind::Refused | GhErrorKind::Unknown => false,
            GhErrorKind::Transient => tries < TRIES,
        };
        let wait = error.retry_after.unwrap_or(backoff);
        if !again || wait > settings.max_wait {
            return Err(error);
        }
        tracing::warn!(tries, "{error}; trying again in {wait:?}");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 4).min(settings.max_wait);
    }
}

/// Sends one request and classifies its answer.
async fn send(
    api: &Octocrab,
    verb: Verb,
    route: &str,
    body: Option<&Value>,
) -> Result<(Value, Option<String>), GhError> {
    let sent = match verb {
        Verb::Get => api._get(route).await,
        Verb::Post | Verb::PostRepeatable => api._post(route, body).await,
        Verb::Patch | Verb::PatchOnce => api._patch(route, body).await,
        Verb::Put => api._put(route, body).await,
    };
    let fail = |kind, status, message: String, retry_after| GhError {
        what: String::new(),
        kind,
        status,
        message,
        retry_after,
    };
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            crate::metrics::github_no_answer();
            // No answer: the request may have reached GitHub.
            let kind = if verb.idempotent() {
                GhErrorKind::Transient
            } else {
                GhErrorKind::Unknown
            };
            return Err(fail(
                kind,
                None,
                format!("calling GitHub failed: {}", causes(&e)),
                None,
            ));
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    crate::metrics::github_answered(status, &headers);
    let bytes = match api.body_to_string(response).await {
        Ok(text) => text.into_bytes(),
        Err(e) => {
            let kind = if verb.idempotent() || !(200..300).contains(&status) {
                GhErrorKind::Transient
            } else {
                // A create answered 2xx and the connection dropped mid-answer: it happened.
                GhErrorKind::Unknown
            };
            return Err(fail(
                kind,
                Some(status),
                format!("the answer was cut: {e}"),
                None,
            ));
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if (200..300).contains(&status) {
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                fail(
                    GhErrorKind::Refused,
                    Some(status),
                    format!("the answer is not JSON: {e}"),
                    None,
                )
            })?
        };
        return Ok((value, header("link")));
    }
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
    let retry_after = rate_limit_wait(
        header("retry-after").as_deref(),
        header("x-ratelimit-remaining").as_deref(),
        header("x-ratelimit-reset").as_deref(),
        jiff::Timestamp::now().as_second(),
    );
    let rate_limited = status == 429
        || (status == 403
            && (retry_after.is_some() || message.to_ascii_lowercase().contains("rate limit")));
    let kind = if rate_limited {
        // GitHub refuses a rate-limited request before doing anything.
        GhErrorKind::Transient
    } else if status >= 500 && status != 501 {
        if verb.idempotent() {
            GhErrorKind::Transient
        } else {
            GhErrorKind::Unknown
        }
    } else {
        GhErrorKind::Refused
    };
    let retry_after = match (rate_limited, retry_after) {
        // A secondary limit without a Retry-After: GitHub says to wait at least a minute.
        (true, None) => Some(Duration::from_secs(60)),
        (_, wait) => wait,
    };
    Err(fail(kind, Some(status), message, retry_after))
}

/// An error and every cause under it, `: `-separated (a timeout is said as one, not as "client error").
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// How long GitHub asked to wait: `Retry-After` seconds, or, when no requests are left, until
/// `x-ratelimit-reset` (Unix seconds).
fn rate_limit_wait(
    retry_after: Option<&str>,
    remaining: Option<&str>,
    reset: Option<&str>,
    now_secs: i64,
) -> Option<Duration> {
    if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if remaining.map(str::trim) == Some("0")
        && let Some(reset) = reset.and_then(|v| v.trim().parse::<i64>().ok())
    {
        return Some(Duration::from_secs(
            reset.saturating_sub(now_secs).max(1) as u64
        ));
    }
    None
}

/// The next page's route from a `Link` header, when it points at the same API (a link elsewhere is never
/// followed: it would carry nightshift's token to another host).
fn next_page(link: &str, api_url: &str) -> Option<String> {
    let next = link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })?;
    let base = api_url.trim_end_matches('/');
    let rest = next.strip_prefix(base)?;
    rest.starts_with('/').then(|| rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_the_rate_limit_reset_say_how_long_to_wait() {
        assert_eq!(
            rate_limit_wait(Some("7"), None, None, 0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            rate_limit_wait(None, Some("0"), Some("1000"), 970),
            Some(Duration::from_secs(30))
        );
        // Requests left: the reset is no reason to wait.
        assert_eq!(rate_limit_wait(None, Some("12"), Some("1000"), 970), None);
        assert_eq!(rate_limit_wait(Some("soon"), None, None, 0), None);
    }

    #[test]
    fn only_next_pages_on_the_same_api_are_followed() {
        let api = "https://api.github.com";
        let link = "<https://api.github.com/repos/o/r/issues/1/comments?per_page=100&page=2>; rel=\"next\", \
                    <https://api.github.com/repos/o/r/issues/1/comments?per_page=100&page=5>; rel=\"last\"";
        assert_eq!(
            next_page(link, api).as_deref(),
            Some("/repos/o/r/issues/1/comments?per_page=100&page=2")
        );
        // GHES: the base has a path.
        assert_eq!(
            next_page(
                "<https://ghe.example/api/v3/x?page=2>; rel=\"next\"",
                "https://ghe.example/api/v3/"
            )
            .as_deref(),
            Some("/x?page=2")
        );
        for hostile in [
            "<https://evil.example/steal?page=2>; rel=\"next\"",
            "<https://api.github.com.evil.example/x>; rel=\"next\"",
            "<https://api.github.com@evil.example/x>; rel=\"next\"",
        ] {
            assert_eq!(next_page(hostile, api), None, "{hostile}");
        }
        assert_eq!(
            next_page("<https://api.github.com/x?page=1>; rel=\"prev\"", api),
            None
        );
    }
}
