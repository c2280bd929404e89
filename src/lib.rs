//! nightshift: a self-hosted runner for AI coding agents on GitHub.
//!
//! The pipeline is visible in the module tree:
//! [`source`] (signed webhooks) → [`store`] (durable deliveries and jobs) → [`trigger`] (which trigger files
//! fire) → [`queue`] (leased jobs, workers) → [`agent`] (worktree and agent process) → [`sink`] (results back
//! to GitHub through [`github`]).

pub mod agent;
pub mod config;
pub mod gateway;
pub mod github;
pub mod health;
pub mod ids;
pub mod metrics;
pub mod queue;
pub mod redact;
pub mod repo;
pub mod safe_fs;
pub mod sandbox;
pub mod server;
pub mod setup;
pub mod sink;
pub mod skill;
pub mod source;
pub mod store;
pub mod text;
pub mod trigger;
pub mod web;
pub mod yaml;

/// Current time as Unix milliseconds, the unit every timestamp in the store uses.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's host name: worker names (`HOST-PID-wN`) carry it, so a restarted service can tell its own
/// dead workers' leftovers.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "nightshift".to_owned())
}

/// The TLS crypto provider every HTTPS client here uses (ring, as octocrab's); call before building one.
/// Installing it again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
