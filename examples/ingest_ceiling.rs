//! The ingest bench's ceiling (`bench/ingest.sh`): the HTTP stack nightshift uses (axum on hyper, tokio)
//! answering GitHub webhooks with their signature checked (HMAC-SHA256, secret "secret") and nothing stored.
//! Whatever nightshift's rate falls short of this one, measured in the same run, the store takes.
//! `cargo run --release --example ingest_ceiling -- 127.0.0.1:PORT`; prints `listening ADDRESS` when ready.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};

async fn webhook(headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok());
    let Some(signature) = signature else {
        return StatusCode::UNAUTHORIZED;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"secret").expect("any key length");
    mac.update(&body);
    match mac.verify_slice(&signature) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::UNAUTHORIZED,
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
    axum::serve(listener, app).await
}
