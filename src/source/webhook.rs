//! `POST /webhooks/github`: verify the signature, store the delivery durably, answer. Nothing slow happens
//! here: matching and running jobs start after the answer, from the store.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use octocrab::secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tracing::{info, warn};

use super::Intake;
use super::event::Indexed;
use super::ingest::{BodyBudget, BodyError, Writer, discard_small_body, read_body};
use crate::config::IngestConfig;
use crate::ids::DeliveryId;
use crate::store::{Inserted, NewDelivery};

/// What is left of a refused request's body is read (and dropped) up to this size before the answer.
const DRAINED_WHEN_REFUSED: usize = 1024 * 1024;

/// GitHub does not deliver payloads above 25 MB; neither do we accept them.
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;

pub struct WebhookState {
    pub secrets: std::sync::RwLock<Vec<SecretString>>,
    /// The endpoint's limits.
    pub ingest: IngestConfig,
    /// Stores deliveries in batches (group commit).
    pub writer: Writer,
    /// Memory for request bodies in flight.
    pub budget: BodyBudget,
}

impl WebhookState {
    /// The state of the webhook endpoint, with its writer task started.
    pub fn start(intake: Intake, ingest: IngestConfig, secrets: Vec<SecretString>) -> WebhookState {
        WebhookState {
            writer: Writer::start(intake, &ingest),
            budget: BodyBudget::new(ingest.body_budget),
            ingest,
            secrets: std::sync::RwLock::new(secrets),
        }
    }
}

/// The path GitHub delivers webhooks to.
pub const PATH: &str = "/webhooks/github";

pub fn routes(state: Arc<WebhookState>) -> Router {
    Router::new().route(PATH, post(receive)).with_state(state)
}

/// Whether `signature` (an `X-Hub-Signature-256` value) is the HMAC-SHA256 of `body` under any of `secrets`.
/// The comparison is constant-time.
pub fn verify_signature(secrets: &[SecretString], body: &[u8], signature: &str) -> bool {
    let Some(hex_digest) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    secrets.iter().any(|secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

fn reply(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "message": message }))).into_response()
}

/// An answer given before the body was read: the connection is closed after it (what is left of the body
/// is not read).
fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = reply(status, message);
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

async fn receive(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    // Everything that can be refused without the body is refused before reading it (a small body is
    // drained first, so its sender sees the answer rather than a reset connection).
    // No secret yet (the App is being set up in the browser): nothing can be verified, so nothing is read.
    // 503, not 401: the sender did nothing wrong, and GitHub marks the delivery failed, to be sent again.
    let unset = state.secrets.read().unwrap().is_empty();
    let refused_headers = if unset {
        warn!(
            "webhook refused unread: no webhook secret yet (set the App up at the setup URL printed at start)"
        );
        Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "nightshift has no webhook secret yet: the GitHub App is not set up",
        ))
    } else if header(headers, "x-hub-signature-256").is_none() {
        warn!("webhook without X-Hub-Signature-256 refused");
        Some((StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256"))
    } else if header(headers, "x-github-event").is_none() {
        Some((StatusCode::BAD_REQUEST, "missing X-GitHub-Event"))
    } else if header(headers, "x-github-delivery").is_none() {
        Some((StatusCode::BAD_REQUEST, "missing X-GitHub-Delivery"))
    } else {
        None
    };
    if let Some((status, message)) = refused_headers {
        discard_small_body(body, DRAINED_WHEN_REFUSED, state.ingest.body_timeout).await;
        return refuse(status, message);
    }
    let (Some(signature), Some(event), Some(delivery)) = (
        header(headers, "x-hub-signature-256"),
        header(headers, "x-github-event"),
        header(headers, "x-github-delivery"),
    ) else {
        return refuse(StatusCode::BAD_REQUEST, "missing headers");
    };
    let length = match header(headers, "content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(length)) if length <= MAX_PAYLOAD => length,
        Some(_) => {
            warn!(delivery, "webhook body above 25 MB refused unread");
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is above 25 MB");
        }
    };
    // Refused unread when the budget has no room for what the body says it is; nothing is reserved for
    // it until its bytes come.
    let Some(mut reservation) = state.budget.for_body(length) else {
        warn!(
            delivery,
            length,
            in_flight = state.budget.in_use(),
            "webhook refused unread: request bodies in flight are at the memory budget"
        );
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies in flight; try again",
        );
    };
    let ingest = &state.ingest;
    let body = match read_body(body, &mut reservation, MAX_PAYLOAD, ingest.body_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            warn!(delivery, "webhook body above 25 MB refused");
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is above 25 MB");
        }
        Err(BodyError::OverBudget) => {
            warn!(
                delivery,
                "webhook refused: its body went past the memory budget for bodies in flight"
            );
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies in flight; try again",
            );
        }
        Err(BodyError::TimedOut) => {
            warn!(delivery, "webhook body not received in time; refused");
            return refuse(StatusCode::REQUEST_TIMEOUT, "the body took too long");
        }
        Err(BodyError::Broken(e)) => {
            return refuse(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"));
        }
    };
    if !verify_signature(&state.secrets.read().unwrap(), &body, signature) {
        warn!("webhook with a wrong signature refused");
        return reply(StatusCode::UNAUTHORIZED, "signature does not match");
    }
    let indexed = match Indexed::parse(&body) {
        Ok(indexed) => indexed,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a JSON event: {e}"),
            );
        }
    };
    let new = NewDelivery::new(
        DeliveryId(delivery.to_owned()),
        event.to_owned(),
        indexed.action.clone(),
        indexed.repo.clone(),
        indexed.installation_id,
        body.into(),
    );
    match state.writer.insert(new, reservation).await {
        Ok(Inserted::New(_)) => {
            info!(
                delivery = %delivery,
                event,
                action = indexed.action.as_deref().unwrap_or_default(),
                repo = indexed.repo.as_deref().unwrap_or_default(),
                "delivery stored"
            );
            reply(StatusCode::ACCEPTED, "stored")
        }
        Ok(Inserted::Duplicate) => {
            info!(delivery = %delivery, event, "delivery seen before; nothing to do");
            reply(StatusCode::OK, "already received")
        }
        Ok(Inserted::Replayed { first }) => {
            warn!(
                delivery = %delivery,
                first = %first,
                event,
                "the same signed body was stored under delivery {first}: a replay, not stored again"
            );
            (
                axum::Extension(crate::metrics::Replayed),
                reply(StatusCode::OK, "already received"),
            )
                .into_response()
        }
        Err(why) => {
            // Not acknowledged, so GitHub (or whoever redelivers) can try again. The writer logged why.
            warn!(delivery = %delivery, "storing a delivery failed: {why}");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "could not store the delivery",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_test_vector_verifies() {
        let secrets = [SecretString::from("It's a Secret to Everybody")];
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(&secrets, b"Hello, World!", sig));
        assert!(!verify_signature(&secrets, b"Hello, World?", sig));
        assert!(!verify_signature(
            &secrets,
            b"Hello, World!",
            &sig.replace("sha256=", "sha1=")
        ));
        assert!(!verify_signature(&secrets, b"Hello, World!", "sha256=zz"));
    }

    #[test]
    fn any_configured_secret_verifies_so_secrets_can_rotate() {
        let secrets = [
            SecretString::from("new"),
            SecretString::from("It's a Secret to Everybody"),
        ];
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(&secrets, b"Hello, World!", sig));
        assert!(!verify_signature(&secrets[..1], b"Hello, World!", sig));
    }
}
