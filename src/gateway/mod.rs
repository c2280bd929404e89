//! The model gateway: where the codex, claude and openai backends send their model requests. It answers on
//! a unix socket of each job's own (`DATA_DIR/run/job-ID-RANDOM.sock`, which only that job's box's forwarder
//! reaches) and on a loopback TCP port (for `sandbox: none` and for the openai backend, which runs inside
//! nightshift).
//!
//! Each job gets a random token when it starts ([`Gateway::open`]); the token dies with the job's
//! [`JobAccess`]. A request must carry a live token (as `Authorization: Bearer` or `x-api-key`); the gateway
//! drops whatever credentials and headers the agent sent, adds the profile's real key (read once, when the
//! service started) and forwards to the profile's `base_url`, streaming the answer back as it comes. On the
//! way it reads what each response spent ([`meter`]), prices it ([`config`]), keeps the job's total and
//! refuses a request once the job's `max_tokens` or `max_cost_usd`, or its repository's daily budget, is
//! spent, in the provider's own error shape, so the agent shows the reason.

pub mod config;
pub mod egress;
pub mod listen;
pub mod meter;
mod remote;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use octocrab::secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use self::config::GatewayConfig;
use self::meter::{Meter, Tokens, price_of};
use crate::config::{AgentProfile, Backend, Config};
use crate::ids::JobId;
use crate::store::{LogStream, Store, Usage};

/// Anthropic's API, when a claude profile names no `base_url`.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The variable that holds the job's token in Codex's environment (its provider's `env_key`).
pub const CODEX_TOKEN_VAR: &str = "NIGHTSHIFT_MODEL_TOKEN";
/// The largest request body forwarded (a long agent conversation, with its tool outputs).
const MAX_REQUEST: usize = 32 << 20;
/// Model requests one job may have open at once: what bounds the memory a job's requests can take here
/// (bodies are read whole before they are forwarded).
pub const MAX_IN_FLIGHT: usize = 4;
/// How long a job's end waits for its last response to be metered.
const SETTLE: Duration = Duration::from_secs(10);

/// The two wire formats the gateway speaks, which decide the routes, the credentials sent upstream and the
/// shape of its own errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI: Responses (`/v1/responses`) and chat completions (`/v1/chat/completions`).
    OpenAi,
    /// Anthropic: Messages (`/v1/messages`).
    Anthropic,
}

/// Where a job's requests go, and with which key.
#[derive(Clone)]
struct Upstream {
    wire: Wire,
    /// The profile's base URL: OpenAI's includes `/v1`, Anthropic's does not (as each CLI expects).
    base_url: String,
    key: Option<SecretString>,
    /// Anthropic: send the key as `Authorization: Bearer` instead of `x-api-key`.
    bearer: bool,
}

/// One job's standing with the gateway.
struct Grant {
    job: JobId,
    repo: String,
    /// None for a command agent, which has only egress.
    upstream: Option<Upstream>,
    /// The hosts the job may reach through the CONNECT proxy ([`egress`]).
    egress: Vec<String>,
    max_cost_usd: Option<f64>,
    max_tokens: Option<u64>,
    spent: Mutex<Spent>,
    /// Responses still streaming; the job's end waits for them to be metered.
    in_flight: Mutex<usize>,
    settled: Notify,
}

#[derive(Default)]
struct Spent {
    usage: Usage,
    /// Models without a price, already said in the job log.
    unpriced: BTreeSet<String>,
    /// Why a request was refused, the first time one was.
    refused: Option<String>,
    /// That refusal was a limit or budget spent (402), not a request the gateway does not pass.
    refused_spent: bool,
}

impl Grant {
    fn tokens(&self) -> u64 {
        let spent = self.spent.lock().expect("spent lock");
        spent.usage.input_tokens.unwrap_or(0) + spent.usage.output_tokens.unwrap_or(0)
    }

    fn cost(&self) -> f64 {
        let spent = self.spent.lock().expect("spent lock");
        spent.usage.cost_usd.unwrap_or(0.0)
    }
}

/// The gateway: live job tokens, the keys, the price table and the budgets.
pub struct Gateway {
    grants: Mutex<HashMap<[u8; 32], Arc<Grant>>>,
    config: GatewayConfig,
    store: Arc<dyn Store>,
    /// Model keys by the variable they were read from, at start.
    keys: BTreeMap<String, SecretString>,
    client: reqwest::Client,
    tcp: SocketAddr,
    /// The private folder of the jobs' sockets.
    run: PathBuf,
    /// Tests only: egress to this port, and to any address (the tests' servers are on loopback).
    egress_test_port: Mutex<Option<u16>>,
}

impl Gateway {
    /// Reads every profile's key from `env`, binds the TCP port and serves it; each job's socket is bound when
    /// the job opens its access.
    pub async fn start(
        config: &Config,
        store: Arc<dyn Store>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Arc<Gateway>> {
        let mut keys = BTreeMap::new();
        for profile in config.agents.values() {
            if let Some(var) = key_var(&profile.backend)
                && let Some(value) = env(var)
            {
                keys.insert(var.to_owned(), SecretString::from(value));
            }
        }
        let run = config.data_dir.join("run");
        create_private_dir(&run)?;
        // A job's socket path must fit a unix socket's address: said now, not when a job starts.
        let longest = run.join(format!("job-{}-ffffffff.sock", i64::MAX));
        anyhow::ensure!(
            longest.as_os_str().len() < 108,
            "the data dir {} is too deep for the model gateway's sockets (a unix socket's path holds at most \
             107 bytes, and {} would be {}): choose a shorter data_dir",
            config.data_dir.display(),
            longest.display(),
            longest.as_os_str().len()
        );
        // Sockets of jobs a stopped service ran (and of its versions that had one shared socket).
        for entry in
            std::fs::read_dir(&run).with_context(|| format!("reading {}", run.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sock") {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the old {}", path.display()))?;
            }
        }
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen on a loopback port for the model gateway")?;
        crate::install_tls_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the gateway's HTTP client")?;
        let gateway = Arc::new(Gateway {
            grants: Mutex::new(HashMap::new()),
            config: config.gateway.clone(),
            store,
            keys,
            client,
            tcp: tcp.local_addr()?,
            run,
            egress_test_port: Mutex::new(None),
        });
        let app = Router::new().fallback(handle).with_state(gateway.clone());
        // Events are small writes: sent at once, not held back for the previous one's ACK (Nagle).
        let tcp = axum::serve::ListenerExt::tap_io(tcp, |io| {
            let _ = io.set_nodelay(true);
        });
        let tcp = listen::Capped::new(tcp, listen::MAX_CONNECTIONS, "port");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, app).await {
                warn!("the model gateway stopped serving its port: {e}");
            }
        });
        info!(
            port = gateway.tcp.port(),
            sockets = %gateway.run.display(),
            prices = gateway.config.prices.len(),
            "model gateway listening"
        );
        Ok(gateway)
    }

    /// Whether the service's environment had the model key `var` when it started.
    pub fn has_key(&self, var: &str) -> bool {
        self.keys.contains_key(var)
    }

    /// The gateway's loopback address outside any box.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    #[doc(hidden)]
    /// For tests of the egress proxy, whose servers listen on loopback: tunnels go to `port` on any address.
    pub fn egress_test_mode(&self, port: u16) {
        *self.egress_test_port.lock().expect("egress lock") = Some(port);
    }

    /// Gives a job of `profile` a token, for the backends that talk to a model and for agents with egress
    /// (None for a command agent without).
    /// A retried job continues from what its earlier attempts spent.
    pub async fn open(
        self: &Arc<Self>,
        job: JobId,
        repo: &str,
        profile_name: &str,
        profile: &AgentProfile,
    ) -> Result<Option<JobAccess>> {
        let (wire, base_url, bearer) = match &profile.backend {
            Backend::Command(_) if profile.egress.is_empty() => return Ok(None),
            Backend::Command(_) => (Wire::OpenAi, "", false),
            Backend::Codex(o) => (
                Wire::OpenAi,
                o.base_url
                    .as_deref()
                    .unwrap_or(crate::config::OPENAI_BASE_URL),
                true,
            ),
            Backend::Claude(o) => (
                Wire::Anthropic,
                o.base_url.as_deref().unwrap_or(ANTHROPIC_BASE_URL),
                o.bearer,
            ),
            Backend::OpenAi(o) => (Wire::OpenAi, o.base_url.as_str(), true),
        };
        let key = match key_var(&profile.backend) {
            Some(var) => Some(self.keys.get(var).cloned().with_context(|| {
                format!(
                    "agent `{profile_name}` needs its API key in ${var}, which nightshift's environment did \
                     not have when it started"
                )
            })?),
            None => None,
        };
        let earlier = self
            .store
            .job(job)
            .await?
            .and_then(|j| j.usage)
            .unwrap_or_default();
        let grant = Arc::new(Grant {
            job,
            repo: repo.to_owned(),
            upstream: (!matches!(profile.backend, Backend::Command(_))).then(|| Upstream {
                wire,
                base_url: base_url.trim_end_matches('/').to_owned(),
                key,
                bearer,
            }),
            egress: profile.egress.clone(),
            max_cost_usd: profile.max_cost_usd,
            max_tokens: profile.max_tokens.map(u64::from),
            spent: Mutex::new(Spent {
                usage: Usage {
                    model: None,
                    ..earlier
                },
                ..Spent::default()
            }),
            in_flight: Mutex::new(0),
            settled: Notify::new(),
        });
        let token = format!("nsjob-{}", hex::encode(random_bytes()?));
        let digest = digest(&token);
        let (socket, serving) = self.serve_job(job)?;
        self.grants
            .lock()
            .expect("grants lock")
            .insert(digest, grant.clone());
        Ok(Some(JobAccess {
            gateway: self.clone(),
            digest,
            token,
            grant,
            socket,
            serving,
        }))
    }

    /// A socket of the job's own, which its box's forwarder reaches (and no other box does), served until
    /// the job's access ends. Connections need no token to be opened, so a job's agent can hold as many as
    /// a socket takes: on a socket shared by every box, it could hold them all and cut every other job off
    /// its model. On its own it holds at most [`listen::JOB_CONNECTIONS`] of its own.
    fn serve_job(self: &Arc<Self>, job: JobId) -> Result<(PathBuf, tokio::task::JoinHandle<()>)> {
        let name = format!("job-{job}-{}.sock", hex::encode(&random_bytes()?[..4]));
        let socket = self.run.join(name);
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let listener = listen::Capped::new(listener, listen::JOB_CONNECTIONS, "job socket");
        let app = Router::new().fallback(handle).with_state(self.clone());
        let serving = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!("the model gateway stopped serving job {job}'s socket: {e}");
            }
        });
        Ok((socket, serving))
    }

    fn grant(&self, token: &str) -> Option<Arc<Grant>> {
        self.grants
            .lock()
            .expect("grants lock")
            .get(&digest(token))
            .cloned()
    }

    /// Why the job may not make another request, if it may not.
    async fn over_limit(&self, grant: &Grant) -> Option<String> {
        if let Some(max) = grant.max_tokens {
            let spent = grant.tokens();
            if spent >= max {
                return Some(format!(
                    "this job's limit of {max} tokens is spent ({spent} so far)"
                ));
            }
        }
        if let Some(max) = grant.max_cost_usd {
            let spent = grant.cost();
            if spent >= max {
                return Some(format!(
                    "this job's budget of ${max:.2} is spent (${spent:.2} so far)"
                ));
            }
        }
        if let Some(daily) = self.config.per_repository_daily_usd {
            let now = crate::now_ms();
            let midnight = now - now.rem_euclid(86_400_000);
            match self.store.spend_since(&grant.repo, midnight).await {
                Ok(spent) if spent >= daily => {
                    return Some(format!(
                        "the daily budget of ${daily:.2} for {} is spent (${spent:.2} today, UTC)",
                        grant.repo
                    ));
                }
                Ok(_) => {}
                // A budget that cannot be read is not a budget that holds: refuse.
                Err(e) => {
                    warn!("reading {}'s spend today failed: {e:#}", grant.repo);
                    return Some(format!(
                        "the daily budget of {} could not be checked",
                        grant.repo
                    ));
                }
            }
        }
        None
    }

    /// Why a model request may not go upstream when the job's spending is limited in dollars (its
    /// `max_cost_usd`, its repository's daily budget): it names no model the gateway can price. A request
    /// for a model without a price would be metered in tokens only, so its cost would count against no
    /// dollar limit, and an agent could spend past every one by asking for such a model.
    fn unpriced(&self, grant: &Grant, model: Option<&str>) -> Option<String> {
        if grant.max_cost_usd.is_none() && self.config.per_repository_daily_usd.is_none() {
            return None;
        }
        match model {
            Some(model) if price_of(&self.config.prices, model).is_some() => None,
            Some(model) => Some(format!(
                "model `{}` has no price in gateway.prices, and this job's spending is limited in dollars \
                 (max_cost_usd or the repository's daily budget): only priced models may be used",
                model.escape_debug()
            )),
            None => Some(
                "the request names no model (a JSON body with `model`), and this job's spending is limited \
                 in dollars: only requests for a priced model are forwarded"
                    .to_owned(),
            ),
        }
    }

    /// Adds one response's tokens (and their cost) to the job; returns a line for the job log the first
    /// time a model has no price.
    /// A turn is a response that succeeded; a refused or failed request may still have spent tokens.
    fn add(
        &self,
        grant: &Grant,
        requested: Option<&str>,
        succeeded: bool,
        tokens: Option<Tokens>,
    ) -> Option<String> {
        let mut spent = grant.spent.lock().expect("spent lock");
        let usage = &mut spent.usage;
        if succeeded {
            usage.turns = Some(usage.turns.unwrap_or(0) + 1);
        }
        let tokens = tokens?;
        let model = requested
            .map(str::to_owned)
            .or_else(|| tokens.model.clone())
            .unwrap_or_else(|| "(unnamed)".to_owned());
        let sum = |total: &mut Option<u64>, more: u64| *total = Some(total.unwrap_or(0) + more);
        sum(&mut usage.input_tokens, tokens.input);
        sum(&mut usage.cached_input_tokens, tokens.cached_input);
        sum(&mut usage.output_tokens, tokens.output);
        usage.model = Some(model.clone());
        let prices = &self.config.prices;
        let price = price_of(prices, &model)
            .or_else(|| tokens.model.as_deref().and_then(|m| price_of(prices, m)));
        match price {
            Some(price) => {
                usage.cost_usd = Some(usage.cost_usd.unwrap_or(0.0) + price.cost(&tokens));
                None
            }
            None if spent.unpriced.insert(model.clone()) => Some(format!(
                "gateway: model `{model}` has no price in gateway.prices: its tokens are counted, its cost \
                 is unknown{}",
                if grant.max_cost_usd.is_some() {
                    " and max_cost_usd cannot hold for it"
                } else {
                    ""
                }
            )),
            None => None,
        }
    }

    async fn log(&self, job: JobId, line: String) {
        if let Err(e) = self
            .store
            .append_log(job, LogStream::Nightshift, &[line])
            .await
        {
            warn!("writing the job log failed: {e:#}");
        }
    }
}

/// A job's access to the gateway; dropping it revokes the token.
pub struct JobAccess {
    gateway: Arc<Gateway>,
    digest: [u8; 32],
    token: String,
    grant: Arc<Grant>,
    /// The job's own socket, for its box's forwarder; removed, and no longer served, when this is dropped.
    socket: PathBuf,
    serving: tokio::task::JoinHandle<()>,
}

/// What a backend is given to reach its model: the gateway's URL and the job's token.
#[derive(Clone, Debug)]
pub struct ModelAccess {
    /// `http://127.0.0.1:PORT`, no path: Codex and the openai backend add `/v1`, Claude Code adds `/v1/...`.
    pub url: String,
    pub token: String,
    /// The job's own socket, which a boxed agent's forwarder reaches from inside the box.
    pub socket: PathBuf,
    /// The box's loopback port the forwarder listens on, when the agent runs boxed.
    pub in_box_port: Option<u16>,
}

impl ModelAccess {
    /// The network of the agent's box: its loopback, where the gateway answers, and nothing else.
    pub fn network(&self) -> crate::sandbox::Network {
        crate::sandbox::Network::Gateway {
            socket: self.socket.clone(),
            port: self.in_box_port.unwrap_or(IN_BOX_PORT),
        }
    }
}

/// The port the gateway answers on inside a box (the box has a network namespace of its own, so any port
/// will do).
pub const IN_BOX_PORT: u16 = 4180;

impl JobAccess {
    /// What the job's agent uses to reach the gateway: in its box, the forwarder's port on the box's own
    /// loopback; outside one (`sandbox: none`, and the openai backend, which runs inside nightshift), the
    /// gateway's loopback port.
    pub fn model_access(&self, boxed: bool) -> ModelAccess {
        let port = if boxed {
            IN_BOX_PORT
        } else {
            self.gateway.tcp.port()
        };
        ModelAccess {
            url: format!("http://127.0.0.1:{port}"),
            token: self.token.clone(),
            socket: self.socket.clone(),
            in_box_port: boxed.then_some(IN_BOX_PORT),
        }
    }

    /// The job's token (tests and redaction).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The job's own socket, which its box's forwarder reaches.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits (a short while) for responses still streaming to be metered, then returns what the job spent.
    pub async fn settle(&self) -> Usage {
        let wait = async {
            loop {
                let notified = self.grant.settled.notified();
                if *self.grant.in_flight.lock().expect("in-flight lock") == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(SETTLE, wait).await;
        self.grant.spent.lock().expect("spent lock").usage.clone()
    }

    /// What the job has spent so far (responses still streaming not yet counted).
    pub fn usage(&self) -> Usage {
        self.grant.spent.lock().expect("spent lock").usage.clone()
    }

    /// Why a request of this job was refused, if one was.
    pub fn refusal(&self) -> Option<String> {
        self.grant.spent.lock().expect("spent lock").refused.clone()
    }

    /// Why the job fails, when a request of it was refused: `budget reached: ...` for a limit or budget
    /// spent, `the model gateway refused a request: ...` for a request it does not pass.
    pub fn failure(&self) -> Option<String> {
        let spent = self.grant.spent.lock().expect("spent lock");
        let reason = spent.refused.as_ref()?;
        Some(if spent.refused_spent {
            format!("budget reached: {reason}")
        } else {
            format!("the model gateway refused a request: {reason}")
        })
    }
}

impl Drop for JobAccess {
    fn drop(&mut self) {
        self.gateway
            .grants
            .lock()
            .expect("grants lock")
            .remove(&self.digest);
        self.serving.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The service variables that hold model keys: the gateway reads them at start, and agents are never
/// given them.
pub fn key_vars(config: &Config) -> Vec<&str> {
    config
        .agents
        .values()
        .filter_map(|p| key_var(&p.backend))
        .collect()
}

/// The service variable holding a backend's model key.
fn key_var(backend: &Backend) -> Option<&str> {
    match backend {
        Backend::Codex(o) | Backend::Claude(o) => Some(&o.api_key_env),
        Backend::OpenAi(o) => o.api_key_env.as_deref(),
        Backend::Command(_) => None,
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_bytes() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a job token")?;
    Ok(bytes)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// The routes a job may call, by wire: (method, path, whether a response is a model turn to meter).
fn route(wire: Wire, method: &Method, path: &str) -> Option<bool> {
    if method != Method::POST {
        return None;
    }
    match (wire, path) {
        (Wire::OpenAi, "/v1/responses" | "/v1/chat/completions") => Some(true),
        (Wire::Anthropic, "/v1/messages") => Some(true),
        (Wire::Anthropic, "/v1/messages/count_tokens") => Some(false),
        _ => None,
    }
}

fn served(wire: Wire) -> &'static str {
    match wire {
        Wire::OpenAi => "POST /v1/responses and POST /v1/chat/completions",
        Wire::Anthropic => "POST /v1/messages and POST /v1/messages/count_tokens",
    }
}

/// An error in the provider's own shape, so the agent's CLI shows its message.
fn refuse(wire: Wire, status: StatusCode, message: &str) -> Response {
    let kind = match (wire, status.as_u16()) {
        (Wire::Anthropic, 401) => "authentication_error",
        (Wire::Anthropic, 402) => "billing_error",
        (Wire::Anthropic, 404) => "not_found_error",
        (Wire::Anthropic, 413) => "request_too_large",
        (Wire::Anthropic, 400) => "invalid_request_error",
        (Wire::Anthropic, _) => "api_error",
        (Wire::OpenAi, 401) => "invalid_api_key",
        (Wire::OpenAi, 402) => "insufficient_quota",
        (Wire::OpenAi, 404) => "not_found",
        (Wire::OpenAi, 400 | 413) => "invalid_request_error",
        (Wire::OpenAi, _) => "server_error",
    };
    let body = match wire {
        Wire::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Wire::OpenAi => {
            json!({"error": {"message": message, "type": kind, "code": kind, "param": null}})
        }
    };
    (status, axum::Json(body)).into_response()
}

/// The job token a request carries, from whichever header its CLI uses.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// Request headers passed upstream; everything else (credentials, cookies, organisation and project
/// selectors, hop-by-hop headers) stays here.
fn forwarded_request_header(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "accept"
            | "user-agent"
            | "anthropic-version"
            | "anthropic-beta"
            | "openai-beta"
    ) || name.starts_with("x-stainless-")
}

/// Response headers passed back to the agent.
fn forwarded_response_header(name: &str) -> bool {
    matches!(
        name,
        "content-type" | "cache-control" | "retry-after" | "request-id" | "x-request-id"
    ) || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}

async fn handle(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    if request.method() == Method::CONNECT {
        return egress::connect(gateway, request).await;
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    // Claude Code's warm-up: answered here, never forwarded.
    if parts.method == Method::HEAD && path == "/" {
        return StatusCode::OK.into_response();
    }
    let guess = if path.starts_with("/v1/messages") {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    };
    let Some(grant) = presented_token(&parts.headers).and_then(|t| gateway.grant(t)) else {
        return refuse(
            guess,
            StatusCode::UNAUTHORIZED,
            "nightshift: this request has no valid job token (it is wrong, or its job has ended)",
        );
    };
    let Some(wire) = grant.upstream.as_ref().map(|u| u.wire) else {
        return refuse(
            guess,
            StatusCode::NOT_FOUND,
            "nightshift: this job's agent has no model; its token is only for egress (HTTPS_PROXY)",
        );
    };
    let Some(metered) = route(wire, &parts.method, path) else {
        return refuse(
            wire,
            StatusCode::NOT_FOUND,
            &format!(
                "nightshift: the model gateway does not serve {} {path}; it serves {}",
                parts.method,
                served(wire)
            ),
        );
    };
    if metered && let Some(reason) = gateway.over_limit(&grant).await {
        return refuse_and_record(&gateway, &grant, wire, StatusCode::PAYMENT_REQUIRED, reason)
            .await;
    }
    let Some(open) = InFlight::enter(&grant) else {
        return refuse(
            wire,
            StatusCode::TOO_MANY_REQUESTS,
            &format!("nightshift: a job may have {MAX_IN_FLIGHT} model requests open at once"),
        );
    };
    let body = match axum::body::to_bytes(body, MAX_REQUEST).await {
        Ok(body) => body,
        Err(_) => {
            return refuse(
                wire,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("nightshift: a request may be at most {MAX_REQUEST} bytes"),
            );
        }
    };
    let prepared = match prepare(path, body) {
        Ok(prepared) => prepared,
        Err(reason) if metered => {
            return refuse_and_record(&gateway, &grant, wire, StatusCode::BAD_REQUEST, reason)
                .await;
        }
        // Not a model turn (counting tokens): refused all the same (counting a request's tools or content
        // has the provider reach them too), but the job goes on.
        Err(reason) => {
            return refuse(
                wire,
                StatusCode::BAD_REQUEST,
                &format!("nightshift: {reason}"),
            );
        }
    };
    if metered && let Some(reason) = gateway.unpriced(&grant, prepared.model.as_deref()) {
        return refuse_and_record(&gateway, &grant, wire, StatusCode::BAD_REQUEST, reason).await;
    }
    forward(gateway, grant, open, &parts, prepared, metered).await
}

/// Refuses a model request for a reason the job fails with: the first such reason is kept for the job (and
/// said once in its log), every refusal reaches the agent in its provider's error shape.
async fn refuse_and_record(
    gateway: &Gateway,
    grant: &Grant,
    wire: Wire,
    status: StatusCode,
    reason: String,
) -> Response {
    let first = {
        let mut spent = grant.spent.lock().expect("spent lock");
        let first = spent.refused.is_none();
        if first {
            spent.refused = Some(reason.clone());
            spent.refused_spent = status == StatusCode::PAYMENT_REQUIRED;
        }
        first
    };
    if first {
        gateway
            .log(
                grant.job,
                format!("gateway: refused a model request: {reason}"),
            )
            .await;
    }
    refuse(wire, status, &format!("nightshift: {reason}"))
}

/// One open model request of a job, counted until it is dropped (however the request ends: answered,
/// failed, or abandoned by the agent).
struct InFlight(Arc<Grant>);

impl InFlight {
    fn enter(grant: &Arc<Grant>) -> Option<InFlight> {
        let mut in_flight = grant.in_flight.lock().expect("in-flight lock");
        if *in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        *in_flight += 1;
        Some(InFlight(grant.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.0.in_flight.lock().expect("in-flight lock");
        *in_flight -= 1;
        if *in_flight == 0 {
            self.0.settled.notify_waiters();
        }
    }
}

/// The fields of a request body the gateway reads. Everything else is skipped while it is parsed, never
/// built in memory: a tree of a 32 MiB body of tiny values (`[[],[],...]`) takes ten times its size, four
/// requests at once per job. A field given twice is an error (another parser could read the other one).
#[derive(serde::Deserialize)]
struct Head {
    model: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// Each tool's `type` (its other fields skipped).
    tools: Option<Vec<ToolHead>>,
    /// OpenAI's Responses: run the request on OpenAI's side and answer at once, with no usage.
    background: Option<bool>,
    /// Anthropic's MCP connector: MCP servers the provider's servers call.
    mcp_servers: Option<serde::de::IgnoredAny>,
    /// OpenAI's chat completions: a web search the provider's servers run.
    web_search_options: Option<serde::de::IgnoredAny>,
    /// OpenRouter's plugins: a web search, or files fetched and parsed, on its servers.
    plugins: Option<serde::de::IgnoredAny>,
    /// The most output the answer may have (Responses, Messages and chat completions name it differently):
    /// what an answer that reports no usage is charged.
    max_output_tokens: Option<u64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ToolHead {
    #[serde(rename = "type")]
    kind: Option<String>,
    /// A namespace's tools.
    tools: Option<Vec<ToolHead>>,
}

impl ToolHead {
    /// The first tool here or in a namespace below that the provider's servers would run.
    fn server_side(&self) -> Option<&str> {
        if !client_tool(self.kind.as_deref()) {
            return Some(self.kind.as_deref().unwrap_or_default());
        }
        self.tools.iter().flatten().find_map(ToolHead::server_side)
    }
}

/// Whether a tool of this `type` is one the agent's own process runs, or that only looks among the tools the
/// request itself defines (OpenAI's `function`, `custom`, `local_shell`, `namespace` of functions and
/// `tool_search` over them, which the Codex CLI sends; Anthropic's tools without a type or `custom`, and its
/// client tools `bash_*`, `text_editor_*`, `computer_*`, `memory_*`), rather than one the provider's servers
/// run (web search and fetch, MCP servers, code execution, file search, image generation, ...): those reach
/// any host from the provider's side, a way out of the box's network that no `egress:` rule sees (a URL of
/// the agent's choosing carrying what it read). An allow-list: a server tool added later is refused too.
fn client_tool(kind: Option<&str>) -> bool {
    match kind {
        None | Some("function" | "custom" | "local_shell" | "namespace" | "tool_search") => true,
        Some(kind) => ["bash_", "text_editor_", "computer_", "memory_"]
            .iter()
            .any(|prefix| kind.starts_with(prefix)),
    }
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The output an answer that reports no usage is charged when its request set no limit.
pub const UNREPORTED_OUTPUT: u64 = 32_000;

/// A model request as it goes upstream.
struct Prepared {
    body: Bytes,
    /// The model it names.
    model: Option<String>,
    /// What it is charged if its answer reports no usage (a provider that cut the answer, or never says):
    /// its body's bytes as input tokens (more than it holds) and its output limit (or [`UNREPORTED_OUTPUT`]).
    unreported: meter::Tokens,
}

/// Reads the model a request names and, for a streamed chat completion, asks for its usage in the last
/// chunk (which OpenAI sends only when asked). Err: why a model request cannot be forwarded or metered as it
/// is (a body that is not a JSON object the gateway can read, the provider's own tools, content the provider
/// would fetch, a model that searches the web, a streamed chat completion that declines its usage).
fn prepare(path: &str, body: Bytes) -> Result<Prepared, String> {
    let head = serde_json::from_slice::<Head>(&body).map_err(|e| {
        format!("the request body is not a JSON object the gateway can read (each field once): {e}")
    })?;
    let unreported = meter::Tokens {
        input: body.len() as u64,
        cached_input: 0,
        // The largest limit the request names: a server that reads another field than the one charged
        // must not make the charge smaller.
        output: [
            head.max_output_tokens,
            head.max_completion_tokens,
            head.max_tokens,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(UNREPORTED_OUTPUT),
        model: None,
    };
    let prepared = |body: Bytes, model: Option<String>| {
        Ok(Prepared {
            body,
            model,
            unreported: unreported.clone(),
        })
    };
    match remote::find(&body) {
        Err(e) => return Err(format!("the request body is not JSON: {e}")),
        Ok(Some(what)) => {
            return Err(format!(
                "{what} is not allowed: the model provider's servers would fetch it, outside the job's \
                 network rules"
            ));
        }
        Ok(None) => {}
    }
    if let Some(model) = &head.model {
        // OpenAI's `gpt-4o-search-preview`, `gpt-5-search-api`, `o3-deep-research` and the like search on
        // every request, with no tool asked for.
        let lower = model.to_ascii_lowercase();
        // And OpenRouter's `:online` variants and Perplexity's `sonar` models.
        let searches = lower
            .split(['-', '_', '.', ':', '/'])
            .any(|part| matches!(part, "search" | "online" | "sonar"))
            || lower.contains("deep-research");
        if searches {
            return Err(format!(
                "model `{}` searches the web from the provider's servers, outside the job's network \
                 rules: it is not allowed",
                model
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
                    .take(60)
                    .collect::<String>()
            ));
        }
    }
    if let Some(kind) = head.tools.iter().flatten().find_map(ToolHead::server_side) {
        return Err(format!(
            "the model provider's own tools (`{}`) are not allowed: they reach hosts from the provider's \
             servers, outside the job's network rules",
            // The agent wrote it, and the reason may be posted: a name's plain characters, cut.
            kind.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .take(40)
                .collect::<String>()
        ));
    }
    if head.mcp_servers.is_some() {
        return Err(
            "MCP servers called by the model provider (`mcp_servers`) are not allowed: they reach \
                    hosts from the provider's servers, outside the job's network rules"
                .to_owned(),
        );
    }
    if head.web_search_options.is_some() {
        return Err(
            "the model provider's web search (`web_search_options`) is not allowed: it reaches \
                    hosts from the provider's servers, outside the job's network rules"
                .to_owned(),
        );
    }
    if head.plugins.is_some() {
        return Err(
            "the model provider's plugins (`plugins`) are not allowed: they search the web or fetch files \
                    from the provider's servers, outside the job's network rules"
                .to_owned(),
        );
    }
    if head.background == Some(true) {
        return Err(
            "background requests are not allowed: they answer before the model has spent \
                    anything, so what they spend could not be metered"
                .to_owned(),
        );
    }
    if path != "/v1/chat/completions" || head.stream != Some(true) {
        return prepared(body, head.model);
    }
    match head.stream_options.map(|o| o.include_usage) {
        Some(Some(true)) => prepared(body, head.model),
        Some(_) => Err(
            "a streamed chat completion must leave out stream_options or set include_usage: true (its \
             usage is what the gateway meters)"
                .to_owned(),
        ),
        None => {
            // A non-empty object (it has `stream`): the field goes in before its closing brace.
            let end = body
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .filter(|&i| body[i] == b'}')
                .ok_or("the request body is not a JSON object")?;
            let mut changed = Vec::with_capacity(body.len() + 48);
            changed.extend_from_slice(&body[..end]);
            changed.extend_from_slice(br#","stream_options":{"include_usage":true}}"#);
            prepared(Bytes::from(changed), head.model)
        }
    }
}

async fn forward(
    gateway: Arc<Gateway>,
    grant: Arc<Grant>,
    open: InFlight,
    parts: &axum::http::request::Parts,
    prepared: Prepared,
    metered: bool,
) -> Response {
    let Prepared {
        body,
        model,
        unreported,
    } = prepared;
    let upstream = grant.upstream.as_ref().expect("checked by handle");
    let path = parts.uri.path();
    let tail = match upstream.wire {
        Wire::OpenAi => path.strip_prefix("/v1").unwrap_or(path),
        Wire::Anthropic => path,
    };
    let mut url = format!("{}{tail}", upstream.base_url);
    if let Some(query) = parts.uri.query() {
        url.push('?');
        url.push_str(query);
    }
    let mut request = gateway.client.post(&url).body(body);
    for (name, value) in &parts.headers {
        if forwarded_request_header(name.as_str()) {
            request = request.header(name, value);
        }
    }
    if let Some(key) = &upstream.key {
        request = match (upstream.wire, upstream.bearer) {
            (Wire::Anthropic, false) => request.header("x-api-key", key.expose_secret()),
            _ => request.bearer_auth(key.expose_secret()),
        };
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            return refuse(
                upstream.wire,
                StatusCode::BAD_GATEWAY,
                &format!(
                    "nightshift: the model endpoint could not be reached: {}",
                    e.without_url()
                ),
            );
        }
    };
    let status = response.status();
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers() {
        if forwarded_response_header(name.as_str())
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            )
        {
            headers.insert(name, value);
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut meter = Meter::new(&content_type);
        // An agent that stops reading (it has the text it wanted, and closes before the answer's last event,
        // which carries the usage) does not stop the provider generating and billing: the answer is read to
        // its end all the same, still counted as open, and metered.
        let mut agent_gone = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    meter.feed(&chunk);
                    if !agent_gone && tx.send(Ok(chunk)).await.is_err() {
                        agent_gone = true;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.without_url()))).await;
                    break;
                }
            }
        }
        // Counted before the agent sees the end of the answer, so its next request is checked against it.
        // An answer that succeeded and reports no usage (cut short, or a provider that never says) may still
        // have been billed: it is charged its request's size and output limit.
        let mut notes = Vec::new();
        if metered {
            let tokens = match meter.finish() {
                None if status.is_success() => {
                    notes.push(format!(
                        "gateway: an answer reported no usage: charged as {} input tokens (its request's \
                         bytes) and {} output tokens (its limit)",
                        unreported.input, unreported.output
                    ));
                    Some(unreported)
                }
                tokens => tokens,
            };
            notes.extend(gateway.add(&grant, model.as_deref(), status.is_success(), tokens));
        }
        drop(tx);
        for note in notes {
            gateway.log(grant.job, note).await;
        }
        if metered {
            let usage = grant.spent.lock().expect("spent lock").usage.clone();
            if let Err(e) = gateway.store.record_usage(grant.job, &usage).await {
                warn!("recording what job {} spent failed: {e:#}", grant.job);
            }
        }
        drop(open);
    });
    let mut answer = Response::new(Body::from_stream(Chunks(rx)));
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    answer
}

/// The upstream answer's chunks, as they come.
struct Chunks(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: serde_json::Value) -> Option<String> {
        prepare(
            "/v1/responses",
            Bytes::from(serde_json::to_vec(&body).unwrap()),
        )
        .err()
    }

    #[test]
    fn models_that_search_the_web_are_refused_by_name_and_others_pass() {
        for model in [
            "gpt-4o-search-preview",
            "gpt-4o-mini-search-preview-2025-03-11",
            "gpt-5-search-api",
            "o3-deep-research",
            "O4-Mini-Deep-Research",
            "openai/gpt-4o-search-preview",
            "openai/gpt-5.5:online",
            "perplexity/sonar-pro",
        ] {
            let why = refused(json!({"model": model})).expect(model);
            assert!(why.contains("searches the web"), "{why}");
        }
        for model in [
            "gpt-5.5",
            "claude-sonnet-4-5",
            "llama-research-8b",
            "researcher",
            "searchlight",
        ] {
            assert_eq!(refused(json!({"model": model})), None, "{model}");
        }
    }

    #[test]
    fn what_an_answer_without_usage_is_charged_comes_from_its_request() {
        let body = json!({"model": "m", "max_tokens": 1234});
        let size = serde_json::to_vec(&body).unwrap().len() as u64;
        let prepared = prepare(
            "/v1/messages",
            Bytes::from(serde_json::to_vec(&body).unwrap()),
        )
        .unwrap();
        assert_eq!(
            (prepared.unreported.input, prepared.unreported.output),
            (size, 1234)
        );
        let prepared = prepare("/v1/responses", Bytes::from_static(b"{\"model\":\"m\"}")).unwrap();
        assert_eq!(prepared.unreported.output, UNREPORTED_OUTPUT);
        // The largest of the limits named, whichever field the server reads.
        let body = json!({"model": "m", "max_completion_tokens": 9000, "max_output_tokens": 1});
        let prepared = prepare(
            "/v1/chat/completions",
            Bytes::from(serde_json::to_vec(&body).unwrap()),
        )
        .unwrap();
        assert_eq!(prepared.unreported.output, 9000);
        assert!(refused(json!({"model": "m", "plugins": [{"id": "web"}]})).is_some());
    }
}
