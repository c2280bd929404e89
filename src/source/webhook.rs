//! `POST /webhooks/github`: verify the signature, store the delivery durably, answer. Nothing slow happens
//! here: matching and running jobs start after the answer, from the store.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use octocrab::secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tracing::{info, warn};

use super::Intake;
use super::event::Event;
use crate::ids::DeliveryId;
use crate::store::{Inserted, NewDelivery};

/// GitHub does not deliver payloads above 25 MB; neither do we accept them.
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;

pub struct WebhookState {
    pub intake: Intake,
    pub secrets: Vec<SecretString>,
}

pub fn routes(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/webhooks/github", post(receive))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
        .with_state(state)
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

async fn receive(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let Some(signature) = header("x-hub-signature-256") else {
        warn!("webhook without X-Hub-Signature-256 refused");
        return reply(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
    };
    if !verify_signature(&state.secrets, &body, signature) {
        warn!("webhook with a wrong signature refused");
        return reply(StatusCode::UNAUTHORIZED, "signature does not match");
    }
    let Some(event) = header("x-github-event") else {
        return reply(StatusCode::BAD_REQUEST, "missing X-GitHub-Event");
    };
    let Some(delivery) = header("x-github-delivery") else {
        return reply(StatusCode::BAD_REQUEST, "missing X-GitHub-Delivery");
    };
    let parsed = match Event::parse(event, &body) {
        Ok(parsed) => parsed,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a JSON event: {e}"),
            );
        }
    };
    let new = NewDelivery {
        delivery_id: DeliveryId(delivery.to_owned()),
        event: event.to_owned(),
        action: parsed.action.clone(),
        repo: parsed.repository.as_ref().map(|r| r.full_name.to_string()),
        installation_id: parsed.installation.map(|i| i.0 as i64),
        payload: body.to_vec(),
    };
    match state.intake.store.insert_delivery(&new).await {
        Ok(Inserted::New(_)) => {
            info!(
                delivery = %delivery,
                event,
                action = parsed.action.as_deref().unwrap_or_default(),
                repo = new.repo.as_deref().unwrap_or_default(),
                "delivery stored"
            );
            state.intake.deliveries_waiting.notify_waiters();
            reply(StatusCode::ACCEPTED, "stored")
        }
        Ok(Inserted::Duplicate) => {
            info!(delivery = %delivery, event, "delivery seen before; nothing to do");
            reply(StatusCode::OK, "already received")
        }
        Err(e) => {
            // Not acknowledged, so GitHub (or whoever redelivers) can try again.
            warn!(delivery = %delivery, "storing a delivery failed: {e:#}");
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
