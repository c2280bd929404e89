//! `nightshift serve`: the store, the dispatcher, the workers and the HTTP server, wired together.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::agent::workspace::Workspaces;
use crate::config::Config;
use crate::github::GitHub;
use crate::queue::{Pipeline, dispatch, worker};
use crate::source::webhook::{self, WebhookState};
use crate::store;
use crate::trigger::TriggerSet;

/// Warns, once the service is up, about agent profiles that cannot work here: a CLI that is not installed
/// or lacks a flag nightshift passes (a different version), or a secret missing from the environment. Jobs
/// would fail on them later with the same reason; this says it before the first event.
async fn check_agents(config: &Config, has_key: &(dyn Fn(&str) -> bool + Sync)) {
    use crate::agent::cli;
    use crate::config::Backend;
    let nowhere = std::path::Path::new("/nonexistent");
    for (name, profile) in &config.agents {
        let (argv, help, unlisted, key): (Vec<String>, &[&str], &[&str], Option<&str>) =
            match &profile.backend {
                Backend::Codex(o) => (
                    cli::codex_argv(o, nowhere, nowhere),
                    &["exec", "--help"],
                    &[],
                    Some(&o.api_key_env),
                ),
                Backend::Claude(o) => (
                    cli::claude_argv(o, nowhere, profile.max_turns),
                    &["--help"],
                    cli::CLAUDE_UNLISTED_FLAGS,
                    Some(&o.api_key_env),
                ),
                Backend::OpenAi(o) => (Vec::new(), &[], &[], o.api_key_env.as_deref()),
                Backend::Command(_) => continue,
            };
        if let Some(key) = key
            && !has_key(key)
        {
            warn!("agent `{name}`: ${key} is not set, so its jobs will fail until it is");
        }
        if argv.is_empty() {
            continue;
        }
        match cli::check_flags(&argv, help, unlisted).await {
            Ok(missing) if missing.is_empty() => {}
            Ok(missing) => warn!(
                "agent `{name}`: `{}` does not list {} in its help; it may be a version nightshift was not \
                 tested with",
                argv[0],
                missing.join(", ")
            ),
            Err(e) => warn!("agent `{name}`: {e:#} (is it installed and on PATH?)"),
        }
    }
}

/// Starts everything and serves until SIGINT or SIGTERM. `env` is the environment the service started with
/// (its secrets are no longer in the process's own): agents are given variables from it.
pub async fn serve(
    config: Config,
    triggers: TriggerSet,
    env: std::collections::HashMap<String, String>,
) -> Result<()> {
    let started = Instant::now();
    let secrets = config.require_webhook_secrets()?.to_vec();
    let store = store::open(&config.store).await?;
    // Read before any delivery arrives: where looking for missed deliveries stops.
    let backfill_from = crate::source::backfill::first_bound(&*store).await?;
    let github = GitHub::new(&config.github)?;
    if !github.has_credentials() {
        warn!(
            "no GitHub credentials: jobs run, but their results are only logged and recorded, not posted \
             (set NIGHTSHIFT_GITHUB_TOKEN, or a GitHub App id and private key)"
        );
    }
    let mut config = config;
    if config.github.bot_login.is_none() {
        match github.app_bot_login().await {
            Ok(Some(login)) => config.github.bot_login = Some(login),
            // Token mode: the token's own account is who nightshift acts as.
            Ok(None) if github.has_credentials() => match token_login(&github).await {
                Ok(login) => config.github.bot_login = login,
                Err(e) => warn!(
                    "could not learn the token's login (GET /user), so nightshift cannot tell its own events apart (set github.bot_login): {e:#}"
                ),
            },
            Ok(None) => {}
            Err(e) => warn!(
                "could not learn the App's login, so nightshift cannot tell its own events apart: {e:#}"
            ),
        }
    }
    for warning in triggers.triggers().iter().flat_map(|t| &t.warnings) {
        warn!("{warning}");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // The gateway holds the model keys; nothing an agent is given comes from them.
    let gateway =
        crate::gateway::Gateway::start(&config, store.clone(), &|name| env.get(name).cloned())
            .await?;
    let mut env = env;
    for name in crate::gateway::key_vars(&config) {
        env.remove(name);
    }
    let pipeline = Arc::new(Pipeline {
        workspaces: Workspaces::new(&config.data_dir, config.git.clone()),
        triggers: std::sync::RwLock::new(Arc::new(triggers)),
        repo_triggers: Default::default(),
        known_repos: Default::default(),
        standing: Default::default(),
        store,
        github,
        deliveries_waiting: Notify::new(),
        jobs_waiting: Notify::new(),
        env: Box::new(move |name| env.get(name).cloned()),
        gateway,
        health: Default::default(),
        config,
    });

    // Every secret the service knows is redacted from job logs and from what it posts.
    pipeline.config.register_secrets(&*pipeline.env);

    // Asking each agent CLI for its --help takes a moment; it must not hold up the first webhook.
    let checked = pipeline.clone();
    tokio::spawn(async move {
        check_agents(&checked.config, &|key| checked.gateway.has_key(key)).await
    });
    tokio::spawn(dispatch::run(pipeline.clone()));
    tokio::spawn(crate::source::schedule::run(pipeline.clone()));
    tokio::spawn(crate::source::installations::run(pipeline.clone()));
    tokio::spawn(crate::source::backfill::run(
        pipeline.clone(),
        backfill_from,
    ));
    tokio::spawn(crate::trigger::reload::watch(pipeline.clone()));
    let instance = format!("{}-{}", hostname(), std::process::id());
    pipeline.health.expect_workers(pipeline.config.workers);
    for n in 0..pipeline.config.workers {
        tokio::spawn(worker::run(pipeline.clone(), format!("{instance}-w{n}")));
    }

    let app = Router::new()
        .merge(webhook::routes(Arc::new(WebhookState {
            pipeline: pipeline.clone(),
            secrets,
        })))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", {
            let pipeline = pipeline.clone();
            get(move || async move { pipeline.health.readyz() })
        });
    info!(
        %address,
        triggers = pipeline.triggers().triggers().len(),
        workers = pipeline.config.workers,
        store = %pipeline.config.store,
        bot = %pipeline.config.github.bot_login.as_deref().unwrap_or("-"),
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    info!("stopped");
    Ok(())
}

/// The login of the account a personal or fine-grained token belongs to.
async fn token_login(github: &GitHub) -> Result<Option<String>> {
    let me = github
        .client(None)
        .await?
        .get("asking GitHub whose token this is", "/user")
        .await?;
    Ok(me["login"].as_str().map(str::to_owned))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "nightshift".to_owned())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    info!("shutting down; running jobs are picked up again after their lease expires");
}
