//! The ingest bench's ceiling (`bench/ingest.sh`): nightshift's own HTTP server (`server::serve_http`, with
//! the default `ingest:` limits) and its own signature check (`source::webhook::verify_signature`, secret
//! "secret"), answering 202 and storing nothing. Whatever nightshift's rate falls short of this one,
//! measured in the same run, the store takes.
//! `cargo run --release --example ingest_ceiling -- 127.0.0.1:PORT`; prints `listening ADDRESS` when ready.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use nightshift::config::IngestConfig;
use nightshift::source::webhook::verify_signature;
use octocrab::secrecy::SecretString;

async fn webhook(headers: HeaderMap, body: Bytes) -> StatusCode {
    let secrets = [SecretString::from("secret")];
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if verify_signature(&secrets, &body, signature) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNAUTHORIZED
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening {}", listener.local_addr()?);
    let app = Router::new().route("/webhooks/github", post(webhook));
    nightshift::server::serve_http(
        listener,
        app,
        &IngestConfig::default(),
        std::future::pending(),
    )
    .await;
    Ok(())
}
