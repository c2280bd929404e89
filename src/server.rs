//! `nightshift serve`: the store, the dispatcher, the workers and the HTTP server, wired together.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
use crate::github::GitHub;
use crate::queue::{Pipeline, dispatch, worker};
use crate::repo::workspace::Workspaces;
use crate::source::Intake;
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
    let mut config = config;
    // An App set up in the browser earlier (config values win; see `setup::adopt_stored`).
    crate::setup::adopt_stored(&mut config)?;
    crate::setup::require_secrets_or_setup(&config)?;
    let secrets = config.github.webhook_secrets.clone();
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
        triggers: Arc::new(crate::trigger::Live::new(triggers)),
        repo_triggers: Default::default(),
        known_repos: Default::default(),
        standing: Default::default(),
        store,
        github,
        deliveries_waiting: Default::default(),
        jobs_waiting: Notify::new(),
        env: Box::new(move |name| env.get(name).cloned()),
        gateway,
        health: Default::default(),
        fresh: Arc::new(crate::source::ingest::FreshPayloads::new(FRESH_PAYLOADS)),
        disk_use: Default::default(),
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
    let intake = Intake {
        store: pipeline.store.clone(),
        deliveries_waiting: pipeline.deliveries_waiting.clone(),
        health: pipeline.health.clone(),
        fresh: pipeline.fresh.clone(),
    };
    tokio::spawn(crate::source::schedule::run(
        intake.clone(),
        pipeline.triggers.clone(),
        pipeline.github.clone(),
        pipeline.config.github.api_url.clone(),
    ));
    // The App's sources: its installations (listed daily), deliveries missed while down (asked for again).
    tokio::spawn(crate::source::installations::run(
        pipeline.store.clone(),
        pipeline.github.clone(),
    ));
    tokio::spawn(crate::source::backfill::run(
        pipeline.store.clone(),
        pipeline.github.clone(),
        backfill_from,
    ));
    tokio::spawn(crate::trigger::reload::watch(
        pipeline.triggers.clone(),
        vec![pipeline.config.triggers.clone()],
        pipeline.config.agent_kinds(),
    ));
    tokio::spawn(crate::queue::retention::run(pipeline.clone()));
    // Other replicas' writes (a store several share) wake this one's dispatcher and workers.
    if let Some(wakeups) = pipeline.store.wakeups() {
        tokio::spawn(crate::queue::relay_wakeups(pipeline.clone(), wakeups));
    }
    // Signals are listened for from here on: a stop now is a drain, never the default (killed outright).
    let signals = Signals::new()?;
    // What dead workers of this host left (a crash, a kill -9) goes before new jobs start.
    worker::clear_dead_attempts(&pipeline, None).await;
    let instance = format!("{}-{}", crate::hostname(), std::process::id());
    pipeline.health.expect_workers(pipeline.config.workers);
    let (stop, stopping) = tokio::sync::watch::channel(worker::Stop::Run);
    let mut workers = tokio::task::JoinSet::new();
    let claims = Arc::new(crate::queue::claims::Claims::new(
        pipeline.store.clone(),
        pipeline.config.claim_policy(),
    ));
    for n in 0..pipeline.config.workers {
        workers.spawn(worker::run(
            pipeline.clone(),
            claims.clone(),
            format!("{instance}-w{n}"),
            stopping.clone(),
        ));
    }

    let webhook_state = Arc::new(WebhookState::start(
        intake.clone(),
        pipeline.config.ingest.clone(),
        secrets,
    ));
    let mut app = Router::new().merge(
        webhook::routes(webhook_state.clone())
            .layer(axum::middleware::from_fn(crate::metrics::count_deliveries)),
    );
    // No credentials at all: the App can be set up in a browser, at a URL printed once.
    if !pipeline.github.has_credentials() {
        let public_url = match &pipeline.config.public_url {
            Some(url) => url.clone(),
            None => {
                warn!(
                    "public_url is not set: the App set up in the browser would get webhooks at http://{address}, \
                     which GitHub cannot reach from outside this machine"
                );
                format!("http://{address}")
            }
        };
        let setup = crate::setup::Setup::new(
            &pipeline.config,
            &public_url,
            pipeline.github.clone(),
            webhook_state.clone(),
        );
        // Printed once, to the terminal, not through the log (the URL holds the setup token).
        eprintln!(
            "\nnightshift has no GitHub App yet. Set one up in a browser (this URL works once, until it is \
             done):\n\n    {}\n",
            setup.url()
        );
        app = app.merge(crate::setup::routes(setup));
    }
    // The dashboard at `/` (its routes are its own: none is the webhook's, a probe's or setup's).
    app = app.merge(crate::web::routes(crate::web::Dashboard::new(
        &pipeline.config,
        pipeline.store.clone(),
        pipeline.triggers.clone(),
        pipeline.repo_triggers.clone(),
    )));
    let mut app = app
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", {
            let pipeline = pipeline.clone();
            get(move || async move { pipeline.health.readyz_with(&*pipeline.store).await })
        })
        .route("/metrics", {
            let pipeline = pipeline.clone();
            let access = crate::metrics::Access {
                token: pipeline.config.metrics_token.clone(),
            };
            get(move |headers: axum::http::HeaderMap| async move {
                crate::metrics::scrape(&access, &*pipeline.store, &headers).await
            })
        });
    // Every other request's body (a dashboard or setup form, a probe, a path that is none of these) is read
    // whole before its handler runs, within the webhook's time limit and memory budget, and small: a client
    // that sends its headers and never its body gives up its connection after `ingest.body_timeout`.
    app = app.layer(axum::middleware::from_fn_with_state(
        SmallBodies {
            budget: webhook_state.budget.clone(),
            timeout: pipeline.config.ingest.body_timeout,
        },
        small_bodies,
    ));
    info!(
        %address,
        triggers = pipeline.triggers().triggers().len(),
        workers = pipeline.config.workers,
        store = %pipeline.config.store,
        bot = %pipeline.config.github.bot_login.as_deref().unwrap_or("-"),
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    // After ready: starting them takes CPU that start-up needs more.
    crate::trigger::isolate::prewarm();
    serve_http(
        listener,
        app,
        &pipeline.config.ingest,
        drain(pipeline.clone(), signals, stop, workers),
    )
    .await;
    info!("stopped");
    Ok(())
}

/// Serves HTTP/1 on `listener` until `shutdown`, then lets open connections finish. At most a connection
/// limit below the open-file limit is open at once (more wait in the kernel's accept queue: the service
/// never runs out of file descriptors); a client gets `ingest.header_timeout` to send a request's headers
/// (also between requests of a kept-alive connection).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    ingest: &crate::config::IngestConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let limit = connection_limit(ingest.max_connections, open_file_limit());
    let slots = Arc::new(tokio::sync::Semaphore::new(limit));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ingest.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or memory for a moment: wait, never stop serving.
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        // Each request knows the connection's peer (`ConnectInfo`): the dashboard limits sign-ins by it.
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            tower_service::Service::call(&mut app.clone(), request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it ends.
    let _ = slots.acquire_many(limit as u32).await;
}

/// What bounds the body of a request that is not a webhook delivery.
#[derive(Clone)]
struct SmallBodies {
    /// The webhook's memory budget for bodies in flight, shared.
    budget: crate::source::ingest::BodyBudget,
    /// `ingest.body_timeout`.
    timeout: std::time::Duration,
}

/// The most a request other than a webhook delivery may carry: the dashboard's and setup's forms are a few
/// hundred bytes.
const SMALL_BODY: usize = 64 * 1024;

/// Reads the body of every request but a webhook delivery (which reads its own, after checking its headers)
/// before the handler runs: at most [`SMALL_BODY`] bytes (413), within `ingest.body_timeout` (408), counted
/// as they arrive against the memory budget for bodies in flight until the answer is made (503 past it). Without it, a
/// form's extractor waited for a body forever, and connections that sent headers and no body held every
/// connection slot: webhooks waited in the kernel's queue for as long as the sender liked.
async fn small_bodies(
    axum::extract::State(limits): axum::extract::State<SmallBodies>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::source::ingest::{BodyError, read_body};
    use axum::body::HttpBody;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if request.uri().path() == webhook::PATH || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let refuse = |status: StatusCode, message: &'static str| (status, message).into_response();
    let said = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    if said > SMALL_BODY {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
    }
    let Some(mut reservation) = limits.budget.for_body(said) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies in flight; try again",
        );
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body, &mut reservation, SMALL_BODY, limits.timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
        }
        Err(BodyError::OverBudget) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies in flight; try again",
            );
        }
        Err(BodyError::TimedOut) => {
            warn!(path = %parts.uri.path(), "a request's body was not received in time; refused");
            return refuse(StatusCode::REQUEST_TIMEOUT, "the body took too long");
        }
        Err(BodyError::Broken(_)) => return refuse(StatusCode::BAD_REQUEST, "the body is broken"),
    };
    let response = next
        .run(axum::extract::Request::from_parts(parts, body.into()))
        .await;
    drop(reservation);
    response
}

/// The soft limit on open files (RLIMIT_NOFILE).
fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// How many connections are served at once: what `ingest.max_connections` says, or 1024, and never more
/// than half the open-file limit (the rest is for the store, git, agents and their logs).
pub fn connection_limit(configured: Option<usize>, open_files: u64) -> usize {
    let ceiling = usize::try_from(open_files / 2).unwrap_or(usize::MAX).max(1);
    let wanted = configured.unwrap_or(1024);
    if wanted > ceiling {
        warn!(
            "serving at most {ceiling} connections at once, half the open-file limit ({open_files}), not {wanted}"
        );
    }
    wanted
        .min(ceiling)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize)
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

/// SIGTERM and SIGINT, listened for from the moment this is made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// How long workers told to stop now may take to give their jobs back before the process exits anyway
/// (their leases then run out).
/// Payloads just stored, kept in memory for the dispatcher (see `FreshPayloads`): a few hundred typical
/// deliveries, the backlog a burst leaves.
const FRESH_PAYLOADS: usize = 8 * 1024 * 1024;

const RELEASE_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The graceful stop, ended when the HTTP server may stop too. On the first SIGTERM or SIGINT: `/readyz`
/// says draining at once, workers claim nothing more, and webhooks are still taken (stored for whoever
/// runs next). Running jobs may finish within `shutdown_grace`; then (or at a second signal) their agents
/// are stopped and the jobs given back to the queue, their start not counted.
async fn drain(
    pipeline: Arc<Pipeline>,
    mut signals: Signals,
    stop: tokio::sync::watch::Sender<worker::Stop>,
    mut workers: tokio::task::JoinSet<()>,
) {
    let signal = signals.next().await;
    pipeline.health.start_draining();
    let grace = pipeline.config.shutdown_grace;
    info!(
        "{signal}: draining; running jobs may finish within {}, then they are stopped and queued again",
        humantime::format_duration(grace)
    );
    let _ = stop.send(worker::Stop::Drain);
    let all_ended = async { while workers.join_next().await.is_some() {} };
    let ended = tokio::select! {
        () = all_ended => true,
        () = tokio::time::sleep(grace) => {
            info!("the grace period is over: stopping the running jobs' agents and queuing the jobs again");
            false
        }
        signal = signals.next() => {
            info!("{signal} again: stopping the running jobs' agents and queuing the jobs again");
            false
        }
    };
    if !ended {
        let _ = stop.send(worker::Stop::Now);
        let released = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout(RELEASE_TIME, released).await.is_err() {
            warn!(
                "workers did not give their jobs back within {}; their leases will run out",
                humantime::format_duration(RELEASE_TIME)
            );
        }
    }
    info!("every job ended or was queued again: stopping");
}
