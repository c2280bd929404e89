//! The service configuration: `nightshift.yml` plus `NIGHTSHIFT_*` environment variables, which override the
//! file for secrets and deployment settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use octocrab::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::yaml::{self, Diagnostic, Diagnostics};

/// The configuration file as written (`nightshift.yml`). Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Address the webhook server listens on.
    listen: Option<Spanned<String>>,
    /// Store URL: `sqlite://PATH` (created if missing; one process), or `postgres://USER@HOST/DATABASE`
    /// (also `postgresql://`; libpq's parameters such as `?sslmode=require` or `?host=/run/postgresql`), for
    /// several replicas on one database: each accepts webhooks, claims jobs and fires schedules, and they
    /// wake each other with LISTEN/NOTIFY. Migrations run at start (once, whoever starts first). A password
    /// in the URL is never logged; `NIGHTSHIFT_STORE` keeps it out of the file.
    store: Option<String>,
    /// Where repository mirrors and job worktrees live.
    data_dir: Option<PathBuf>,
    /// Folder of trigger files (`*.yml`, `*.yaml`).
    triggers: Option<PathBuf>,
    /// Folder of skills in the Agent Skills format.
    skills: Option<PathBuf>,
    /// How many jobs run at once.
    workers: Option<Spanned<usize>>,
    /// How long a claimed job stays ours without a heartbeat before another worker may take it over.
    #[serde(default, deserialize_with = "opt_duration")]
    job_lease: Option<Duration>,
    /// How many times a job is started before it is given up (a crash mid-job counts as a start).
    max_attempts: Option<u32>,
    /// On SIGTERM or SIGINT, how long running jobs may go on to finish before their agents are stopped and
    /// the jobs put back to the queue (their start not counted). Default 20s: under Kubernetes' default
    /// 30 s stop timeout (and systemd's 90 s), with time left to put the jobs back and exit.
    #[serde(default, deserialize_with = "opt_duration")]
    shutdown_grace: Option<Duration>,
    /// The most links in a chain of jobs set off by nightshift's own outputs (default 1): an event a
    /// person caused has depth 0, one a job's output caused that job's depth + 1; past it nothing fires.
    max_depth: Option<u32>,
    /// Whether repositories' own triggers (`.nightshift/triggers/*.yml` on their default branch) apply.
    repo_triggers: Option<bool>,
    /// Whether a failed job says so in a comment on its issue or pull request.
    report_failures: Option<bool>,
    /// The most bytes of agent output one job's log keeps (default 10 MiB); past it, one line says the
    /// rest was cut.
    max_job_log: Option<usize>,
    /// Free space the data dir's disk always keeps for the store and the mirrors: while less is free,
    /// running jobs are stopped (default: 2% of the disk, at most 1 GiB). See `queue::worker::disk_watch`.
    min_free_disk: Option<crate::sandbox::Size>,
    /// GitHub connection and credentials.
    #[serde(default)]
    github: GithubFile,
    /// What nightshift's own git may do.
    #[serde(default)]
    git: GitFile,
    /// Named agent profiles that triggers refer to with `agent:`.
    #[serde(default)]
    agents: BTreeMap<String, Spanned<AgentFile>>,
    /// The model gateway: prices per model.
    #[serde(default)]
    gateway: crate::gateway::config::GatewayFile,
    /// Spending limits beyond a job's own.
    #[serde(default)]
    budgets: crate::gateway::config::BudgetsFile,
    /// The address people reach nightshift at (behind its reverse proxy), e.g. `https://nightshift.example`:
    /// progress comments link to the job's page there.
    public_url: Option<String>,
    /// How a job that met a transient failure (GitHub down, a fetch that failed) is tried again.
    #[serde(default)]
    retry: RetryFile,
    /// The most jobs one repository starts in an hour (default 100); past it its jobs wait.
    max_jobs_per_hour: Option<u32>,
    /// The most jobs of one repository running at once (default: no cap of its own; fair claiming already
    /// takes turns between repositories).
    max_concurrent_per_repo: Option<Spanned<u32>>,
    /// How long finished jobs, their logs and deliveries' payloads are kept (`nightshift prune`).
    #[serde(default)]
    prune: PruneFile,
    /// What outputs may contain, for every trigger (a trigger's own `limits:` override it field by field).
    limits: Option<crate::trigger::model::LimitsFile>,
    /// Verify steps for triggers that have no `verify:` of their own: a list of `{repos, steps, rounds}`;
    /// the first entry whose `repos` patterns match the job's repository applies.
    #[serde(default)]
    verify: Vec<crate::trigger::verify::VerifyDefaultFile>,
    /// The webhook endpoint's limits: memory for bodies in flight, timeouts, connections, replays.
    #[serde(default)]
    ingest: IngestFile,
    /// How the service logs to stderr: `text` (default; one readable line per event) or `json` (one JSON
    /// object per line, with the fields of the spans it happened in: the job's id, trigger, repository and
    /// delivery), for a log collector.
    log_format: Option<LogFormat>,
    /// `/metrics` (Prometheus): who may read it.
    #[serde(default)]
    metrics: MetricsFile,
    /// The dashboard at `/`: who may sign in, and who may cancel and re-run jobs.
    #[serde(default)]
    dashboard: DashboardFile,
}

/// `dashboard:`. Nothing set: the dashboard shows how to turn it on, and no data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DashboardFile {
    /// GitHub logins who may sign in with GitHub (the App's OAuth client) and read.
    #[serde(default)]
    users: Vec<String>,
    /// Organizations whose active members may sign in with GitHub and read (the App needs the
    /// organization permission `members: read`).
    #[serde(default)]
    orgs: Vec<String>,
    /// Logins who may also cancel and re-run jobs (they must be able to sign in: in `users` or `orgs`).
    #[serde(default)]
    admins: Vec<String>,
    /// A static token for headless setups (`Authorization: Bearer TOKEN`, or the sign-in form); it signs in
    /// as an admin. `NIGHTSHIFT_DASHBOARD_TOKEN` keeps it out of the file.
    token: Option<String>,
    /// The OAuth client of a GitHub App created by hand (an App set up in the browser has its own, stored in
    /// the data dir). `NIGHTSHIFT_GITHUB_CLIENT_ID`, `NIGHTSHIFT_GITHUB_CLIENT_SECRET`.
    client_id: Option<String>,
    client_secret: Option<String>,
    /// The reverse proxies in front of nightshift (addresses or networks, e.g. `10.0.0.0/8`): from them,
    /// and only from them, `X-Forwarded-For` says who the client is (sign-in is rate-limited per client).
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

/// Who may use the dashboard (`dashboard:`). Logins and organizations are kept lower-case (GitHub's are
/// case-insensitive).
#[derive(Clone, Debug, Default)]
pub struct DashboardConfig {
    pub users: Vec<String>,
    pub orgs: Vec<String>,
    pub admins: Vec<String>,
    pub token: Option<SecretString>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl DashboardConfig {
    /// Whether anyone at all may sign in.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || !self.users.is_empty() || !self.orgs.is_empty()
    }

    fn resolve(
        file: DashboardFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DashboardConfig, String> {
        let lower = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let secret = |v: Option<String>| {
            v.map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .map(SecretString::from)
        };
        Ok(DashboardConfig {
            trusted_proxies: parse_proxies(&file.trusted_proxies)?,
            users: lower(file.users),
            orgs: lower(file.orgs),
            admins: lower(file.admins),
            token: secret(env("NIGHTSHIFT_DASHBOARD_TOKEN").or(file.token)),
            client_id: env("NIGHTSHIFT_GITHUB_CLIENT_ID")
                .or(file.client_id)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
            client_secret: secret(env("NIGHTSHIFT_GITHUB_CLIENT_SECRET").or(file.client_secret)),
        })
    }
}

/// `log_format:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    /// A bearer token a scraper must send (`Authorization: Bearer TOKEN`) to read `/metrics`; without one
    /// (the default) `/metrics` is open. `NIGHTSHIFT_METRICS_TOKEN` keeps it out of the file.
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestFile {
    /// The most request-body bytes held in memory at once (default 64M); a request that would go past it
    /// is answered 503 before its body is read.
    body_budget: Option<crate::sandbox::Size>,
    /// How long a client may take to send a request's headers, and how long an idle kept-alive
    /// connection stays open (default 10s).
    #[serde(default, deserialize_with = "opt_duration")]
    header_timeout: Option<Duration>,
    /// How long a client may take to send a request's body (default 10s, GitHub's own timeout for the
    /// whole delivery); past it, 408.
    #[serde(default, deserialize_with = "opt_duration")]
    body_timeout: Option<Duration>,
    /// The most connections open at once (default: 1024, or half the open-file limit when that is lower);
    /// past it new connections wait in the kernel's queue.
    max_connections: Option<usize>,
    /// The same signed body under a new delivery id within this long is acknowledged and not stored
    /// again (default 24h; 0s turns it off).
    #[serde(default, deserialize_with = "opt_duration")]
    replay_window: Option<Duration>,
    /// The most deliveries written in one transaction (default 256).
    max_batch: Option<usize>,
}

/// The webhook endpoint's limits (`ingest:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestConfig {
    pub body_budget: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// `None`: from the open-file limit at start.
    pub max_connections: Option<usize>,
    pub replay_window: Duration,
    pub max_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestFile::default().resolve()
    }
}

impl IngestFile {
    fn resolve(self) -> IngestConfig {
        IngestConfig {
            body_budget: self
                .body_budget
                .map_or(64 << 20, |s| usize::try_from(s.0).unwrap_or(usize::MAX)),
            header_timeout: self.header_timeout.unwrap_or(Duration::from_secs(10)),
            body_timeout: self.body_timeout.unwrap_or(Duration::from_secs(10)),
            max_connections: self.max_connections.map(|n| n.max(1)),
            replay_window: self.replay_window.unwrap_or(Duration::from_secs(24 * 3600)),
            max_batch: self.max_batch.unwrap_or(256).max(1),
        }
    }
}

/// `prune:`: how long what ended is kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneFile {
    /// Deliveries' payloads (default 30d after they arrived); the payload of a job not finished is kept.
    #[serde(default, deserialize_with = "opt_duration")]
    payloads: Option<Duration>,
    /// Finished jobs' logs (default 30d after they ended).
    #[serde(default, deserialize_with = "opt_duration")]
    logs: Option<Duration>,
    /// Finished jobs with their outputs' records (default 90d after they ended).
    #[serde(default, deserialize_with = "opt_duration")]
    jobs: Option<Duration>,
}

/// The default retention: a month of payloads and logs, three months of finished jobs.
pub const DEFAULT_PRUNE: crate::store::PrunePolicy = crate::store::PrunePolicy {
    payloads: Duration::from_secs(30 * 86_400),
    logs: Duration::from_secs(30 * 86_400),
    jobs: Duration::from_secs(90 * 86_400),
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    /// How many times a job is put back to wait before it fails (default 10).
    max: Option<u32>,
    /// The first wait; each next one doubles, up to 30 minutes (default 30s).
    #[serde(default, deserialize_with = "opt_duration")]
    backoff: Option<Duration>,
}

/// How jobs that met a transient failure are tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max: u32,
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The longest wait between two tries.
    pub const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

    /// The wait before try `retries + 1` (`retries` waits so far): backoff, doubled each time, capped; at
    /// least what GitHub asked for.
    pub fn wait(&self, retries: u32, asked: Option<Duration>) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << retries.min(16))
            .min(Self::MAX_WAIT);
        asked.map_or(doubled, |a| a.max(doubled))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max: 10,
            backoff: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GithubFile {
    /// REST API base URL (GitHub Enterprise Server: `https://HOST/api/v3`).
    api_url: Option<String>,
    /// GitHub's web address, where the App setup page sends the browser to create the App (GitHub
    /// Enterprise Server: `https://HOST`). Default `https://github.com`.
    web_url: Option<String>,
    /// GitHub App id; with `private_key`, nightshift authenticates as the App and mints installation tokens.
    app_id: Option<u64>,
    /// Path to the App's private key (PEM).
    private_key: Option<PathBuf>,
    /// A token (PAT or installation token) to use instead of App authentication.
    token: Option<String>,
    /// Webhook secrets; a delivery signed with any of them is accepted, so a secret can be rotated.
    #[serde(default)]
    webhook_secrets: Vec<String>,
    /// nightshift's login on GitHub (a GitHub App's is `SLUG[bot]`); events it causes never fire triggers
    /// unless they opt in. nightshift also recognises its own comments by their hidden marker.
    bot_login: Option<String>,
    /// The longest one call to GitHub may take, end to end (default 30s).
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GitFile {
    /// Folders under which a local path may be a repository's clone URL (tests, mirrors on disk).
    /// Without any, only `https://` remotes are used.
    #[serde(default)]
    file_roots: Vec<Spanned<String>>,
    /// Hosts nightshift's git may reach over plain `http://` (a git server on the same machine). Without
    /// any, only https.
    #[serde(default)]
    http_hosts: Vec<String>,
    /// The longest one git command may take (a fetch, a push).
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
}

/// An agent profile as written: exactly one backend (`command`, `codex`, `claude` or `openai`) and the
/// limits and isolation every backend shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    /// argv of a program; the rendered prompt arrives on stdin, the worktree is the working directory.
    command: Option<Vec<String>>,
    /// The Codex CLI (`codex exec`), found on PATH.
    codex: Option<CliFile>,
    /// Claude Code (`claude -p`), found on PATH.
    claude: Option<CliFile>,
    /// An OpenAI-compatible chat completions endpoint (OpenAI, Ollama, vLLM, llama.cpp, gateways).
    openai: Option<EndpointFile>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    env: Vec<String>,
    max_output: Option<usize>,
    sandbox: Option<Spanned<SandboxKind>>,
    /// The box's resource limits (processes, memory, file_size, open_files).
    limits: Option<Spanned<crate::sandbox::LimitsFile>>,
    /// Folders of the machine the box shows even where it hides things (caches, tools).
    shared: Option<Spanned<SharedFile>>,
    /// Replaced by `egress`; still read, to say so.
    network: Option<Spanned<bool>>,
    /// Hosts the agent may reach over HTTPS (port 443) through nightshift's proxy: `HOST` or `*.DOMAIN`.
    #[serde(default)]
    egress: Vec<Spanned<String>>,
    max_turns: Option<Spanned<u32>>,
    max_tokens: Option<Spanned<u32>>,
    max_cost_usd: Option<Spanned<f64>>,
    /// How a command agent gets its prompt: stdin (default), argument or file.
    prompt_via: Option<Spanned<PromptVia>>,
    /// The most jobs of this profile running at once, across the process (and replicas on Postgres).
    max_concurrent: Option<Spanned<u32>>,
    /// Whether a repository's own trigger files may use this profile (see [`AgentProfile::repo_triggers`]).
    repo_triggers: Option<Spanned<bool>>,
}

/// `shared:` in an agent profile: folders given to the box, read-only or writable.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedFile {
    #[serde(default)]
    read_only: Vec<PathBuf>,
    #[serde(default)]
    writable: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliFile {
    model: Option<String>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    /// The program to run instead of the one on PATH.
    program: Option<String>,
    /// Claude Code's permission mode (default acceptEdits).
    permission_mode: Option<Spanned<String>>,
    /// Claude Code: send the key as `Authorization: Bearer` (ANTHROPIC_AUTH_TOKEN), as gateways such as
    /// LiteLLM expect, instead of `x-api-key`.
    #[serde(default)]
    bearer: bool,
    /// Claude Code's tools allowed without asking, e.g. `Bash(cargo test:*)`.
    #[serde(default)]
    allowed_tools: Vec<String>,
    /// More arguments, passed as they are after nightshift's own.
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    model: String,
    base_url: Option<String>,
    api_key_env: Option<String>,
    system: Option<String>,
    temperature: Option<f64>,
}

/// An agent profile: what nightshift runs for a job, and within which limits.
#[derive(Clone, Debug)]
pub struct AgentProfile {
    pub backend: Backend,
    /// Wall-clock limit; the whole process group is killed (or the request dropped) when it runs out.
    pub timeout: Duration,
    /// Names of service environment variables the agent may see (besides a small base allow-list).
    pub env: Vec<String>,
    /// The most bytes of the final message kept; the rest is cut and the job notes it.
    pub max_output: usize,
    /// The agent's box (`crate::sandbox`): `bubblewrap` (the default for every backend that runs a program)
    /// or `none`, which `check` and `serve` warn about.
    pub sandbox: SandboxKind,
    /// Resource limits of the agent's processes.
    pub limits: crate::sandbox::Limits,
    /// Folders of the machine shown in the box, read-only and writable (never inside the data dir).
    pub shared: crate::sandbox::Shared,
    /// Hosts the agent may reach over HTTPS through the model gateway's proxy (`HOST`, `*.DOMAIN`); none by
    /// default.
    pub egress: Vec<String>,
    /// The most model turns (Claude Code's `--max-turns`).
    pub max_turns: Option<u32>,
    /// The most tokens (input and output, every request) a job may spend through the model gateway; the
    /// openai backend also sends it as its request's `max_tokens`.
    pub max_tokens: Option<u32>,
    /// The most dollars a job may spend through the model gateway (priced by `gateway.prices`).
    pub max_cost_usd: Option<f64>,
    /// How a command agent gets its prompt.
    pub prompt_via: PromptVia,
    /// Whether a repository's own trigger files (written by whoever can push its default branch, in any
    /// installed repository) may use this profile. By default, only a profile that holds nothing more than
    /// a job needs may: boxed, with no `env:` (secrets), no `egress:` and no `shared:` folders. A profile with
    /// those may say `repo_triggers: true`; a profile with `sandbox: none` never may.
    pub repo_triggers: bool,
}

/// How a command agent gets its prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptVia {
    /// On stdin, which is then closed.
    #[default]
    Stdin,
    /// As the last argument.
    Argument,
    /// In a file whose path is the last argument and `$NIGHTSHIFT_PROMPT_FILE`.
    File,
}

/// What runs the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    /// Any program: argv, prompt on stdin.
    Command(Vec<String>),
    Codex(CliOptions),
    Claude(CliOptions),
    OpenAi(EndpointOptions),
}

impl AgentProfile {
    /// What this profile holds beyond what any job needs (why repository triggers may not use it by
    /// default): its parts, as a trigger's problem names them.
    pub fn held(&self) -> Vec<&'static str> {
        let mut held = Vec::new();
        if self.sandbox == SandboxKind::None {
            held.push("it runs outside a box (sandbox: none)");
        }
        if !self.env.is_empty() {
            held.push("it is given the service's environment variables (env:)");
        }
        if !self.egress.is_empty() {
            held.push("it reaches hosts beyond its model (egress:)");
        }
        if !self.shared.read_only.is_empty() || !self.shared.writable.is_empty() {
            held.push("it sees folders of the service's machine (shared:)");
        }
        held
    }
}

impl Backend {
    /// The backend's name as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Command(_) => "command",
            Backend::Codex(_) => "codex",
            Backend::Claude(_) => "claude",
            Backend::OpenAi(_) => "openai",
        }
    }

    /// Whether the agent can change files (a model endpoint only answers).
    pub fn edits_files(&self) -> bool {
        !matches!(self, Backend::OpenAi(_))
    }
}

/// A built-in agent CLI (Codex or Claude Code).
#[derive(Clone, Debug, PartialEq)]
pub struct CliOptions {
    /// The program, `codex` or `claude` on PATH unless the profile names another.
    pub program: String,
    pub model: Option<String>,
    /// The model API's base URL, for gateways and proxies (the vendor's own when None).
    pub base_url: Option<String>,
    /// The service environment variable holding the one secret the agent receives.
    pub api_key_env: String,
    pub permission_mode: String,
    /// Claude Code: the key goes out as a Bearer token (ANTHROPIC_AUTH_TOKEN) rather than `x-api-key`.
    pub bearer: bool,
    pub allowed_tools: Vec<String>,
    pub args: Vec<String>,
}

/// An OpenAI-compatible chat completions endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointOptions {
    pub model: String,
    /// e.g. `https://api.openai.com/v1`, `http://localhost:11434/v1` (Ollama).
    pub base_url: String,
    /// The service environment variable holding the API key; None sends no Authorization header (local
    /// servers).
    pub api_key_env: Option<String>,
    /// A system message sent before the prompt.
    pub system: Option<String>,
    pub temperature: Option<f64>,
}

pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Claude Code's permission modes that never stop to ask (with `-p` nothing can answer a prompt).
const CLAUDE_PERMISSION_MODES: &[&str] = &["acceptEdits", "bypassPermissions", "dontAsk", "plan"];

/// The box an agent runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// Namespaces of its own, the service's secrets and other jobs hidden ([`crate::sandbox`]).
    #[default]
    Bubblewrap,
    /// No box: the agent runs as a plain child of the service and can read whatever the service can.
    None,
}

fn default_agent_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

/// What a trigger is checked against: the agent profiles it may name, with their backend (`command`,
/// `codex`, `claude`, `openai`; read through `Deref` as the map), and what the service's GitHub
/// credentials can post.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentKinds {
    kinds: BTreeMap<String, &'static str>,
    /// The service runs with a personal token, which GitHub does not let create check runs (only an App
    /// can): a trigger whose output is `check_run` is refused up front, not at delivery.
    pub token_auth: bool,
    /// The profiles a repository's own triggers may not use, with why (see
    /// [`AgentProfile::repo_triggers`]).
    pub not_for_repos: BTreeMap<String, String>,
}

impl std::ops::Deref for AgentKinds {
    type Target = BTreeMap<String, &'static str>;

    fn deref(&self) -> &Self::Target {
        &self.kinds
    }
}

impl std::ops::DerefMut for AgentKinds {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.kinds
    }
}

impl<const N: usize> From<[(String, &'static str); N]> for AgentKinds {
    fn from(kinds: [(String, &'static str); N]) -> AgentKinds {
        AgentKinds {
            kinds: kinds.into(),
            token_auth: false,
            not_for_repos: Default::default(),
        }
    }
}

/// The default budget of one job's agent output in the log (`max_job_log`).
pub const DEFAULT_MAX_JOB_LOG: usize = 10 * 1024 * 1024;

fn default_max_output() -> usize {
    1024 * 1024
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 3000))
}

fn default_store() -> String {
    "sqlite://.nightshift/nightshift.db".to_owned()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".nightshift")
}

fn default_workers() -> usize {
    4
}

/// See `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

fn default_job_lease() -> Duration {
    Duration::from_secs(60)
}

fn default_max_attempts() -> u32 {
    3
}

pub const DEFAULT_API_URL: &str = "https://api.github.com";
pub const DEFAULT_WEB_URL: &str = "https://github.com";

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. 90s, 10m, 1h"
        ))
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// How nightshift authenticates to GitHub.
#[derive(Clone, Debug)]
pub enum GithubAuth {
    /// As a GitHub App: a JWT signed with the private key, exchanged for installation tokens.
    App {
        app_id: u64,
        private_key_pem: SecretString,
    },
    /// With one token for every repository.
    Token(SecretString),
    /// No credentials: outputs are recorded and logged, not delivered (a dry run, announced at start).
    None,
}

#[derive(Clone, Debug)]
pub struct GithubConfig {
    pub api_url: String,
    /// GitHub's web address (`https://github.com`), without a trailing slash.
    pub web_url: String,
    /// The longest one call may take.
    pub timeout: Duration,
    pub bot_login: Option<String>,
    pub auth: GithubAuth,
    pub webhook_secrets: Vec<SecretString>,
}

/// How many links of jobs set off by nightshift's own outputs may follow each other when the service does
/// not say: a job's output may set off one more job, whose output sets off none.
pub const DEFAULT_MAX_DEPTH: u32 = 1;

/// The resolved configuration the service runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: String,
    pub data_dir: PathBuf,
    pub triggers: PathBuf,
    pub skills: PathBuf,
    pub workers: usize,
    pub job_lease: Duration,
    pub max_attempts: u32,
    /// See the file's `shutdown_grace`.
    pub shutdown_grace: Duration,
    /// Lineage: see [`DEFAULT_MAX_DEPTH`].
    pub max_depth: u32,
    pub repo_triggers: bool,
    pub report_failures: bool,
    /// The most bytes of agent output one job's log keeps.
    pub max_job_log: usize,
    /// See the file's `min_free_disk`; `None`: 2% of the data dir's disk, at most 1 GiB.
    pub min_free_disk: Option<u64>,
    pub github: GithubConfig,
    pub git: crate::repo::git::GitPolicy,
    pub agents: BTreeMap<String, AgentProfile>,
    /// The model gateway's prices and budgets.
    pub gateway: crate::gateway::config::GatewayConfig,
    /// Files no agent may read: the config file and the App key file (hidden in every box).
    pub secret_files: Vec<PathBuf>,
    /// Where people reach nightshift (links in progress comments), without a trailing slash.
    pub public_url: Option<String>,
    pub retry: RetryPolicy,
    /// The most jobs one repository starts in an hour.
    pub max_jobs_per_hour: u32,
    /// The most jobs of one repository running at once; `None`: no cap of its own.
    pub max_concurrent_per_repo: Option<u32>,
    /// Agent profiles' `max_concurrent`: the most jobs of the profile running at once (across replicas).
    pub max_concurrent: BTreeMap<String, u32>,
    /// How long finished jobs, their logs and payloads are kept.
    pub prune: crate::store::PrunePolicy,
    /// The service's `limits:`, under every trigger's own.
    pub limits: crate::trigger::model::Limits,
    /// The service's `verify:` defaults, in order (see [`crate::trigger::verify::resolve`]).
    pub verify: Vec<crate::trigger::verify::VerifyDefault>,
    /// The webhook endpoint's limits.
    pub ingest: IngestConfig,
    pub log_format: LogFormat,
    /// The bearer token `/metrics` asks for; `None`: open.
    pub metrics_token: Option<SecretString>,
    /// Who may use the dashboard.
    pub dashboard: DashboardConfig,
}

/// Where the configuration comes from: a file (optional when it is the default path) and the environment.
pub struct ConfigSource<'a> {
    pub path: &'a Path,
    /// False when the path is the default one, so a missing file means "all defaults".
    pub required: bool,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Config {
    /// Reads the file (if any) and the environment, and checks everything, reporting all problems at once.
    pub fn load(source: &ConfigSource<'_>) -> Result<Config, Diagnostics> {
        let path = source.path;
        let file = match std::fs::read_to_string(path) {
            Ok(text) => {
                yaml::from_str::<ConfigFile>(path, &text).map_err(|d| Diagnostics(vec![d]))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.required => {
                ConfigFile::default()
            }
            Err(e) => {
                return Err(Diagnostics(vec![Diagnostic::new(
                    path,
                    1,
                    1,
                    format!("cannot read the config file: {e}"),
                )]));
            }
        };
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        resolve(file, path, &base, source.env)
    }

    /// Registers the configuration's secrets with the process registry: the webhook secrets, the GitHub token or
    /// App key, each profile's model key (`api_key_env`), and each `env:` pass-through variable whose name says
    /// it is secret ([`secret_name`]), as `env` (the service's environment) holds them.
    pub fn register_secrets(&self, env: &dyn Fn(&str) -> Option<String>) {
        let config = self;
        let secrets = crate::redact::global();
        for s in config
            .github
            .webhook_secrets
            .iter()
            .chain(&config.metrics_token)
            .chain(&config.dashboard.token)
            .chain(&config.dashboard.client_secret)
        {
            secrets.add(s.expose_secret());
        }
        match &config.github.auth {
            GithubAuth::App {
                private_key_pem, ..
            } => secrets.add(private_key_pem.expose_secret()),
            GithubAuth::Token(token) => secrets.add(token.expose_secret()),
            GithubAuth::None => {}
        }
        for profile in config.agents.values() {
            let key = match &profile.backend {
                Backend::Codex(o) | Backend::Claude(o) => Some(o.api_key_env.as_str()),
                Backend::OpenAi(o) => o.api_key_env.as_deref(),
                Backend::Command(_) => None,
            };
            let passed = profile
                .env
                .iter()
                .map(String::as_str)
                .filter(|n| crate::redact::secret_name(n));
            for name in key.into_iter().chain(passed) {
                if let Some(value) = env(name) {
                    secrets.add(&value);
                }
            }
        }
    }

    /// The agent profiles' names and backends, for checking triggers.
    pub fn agent_kinds(&self) -> AgentKinds {
        AgentKinds {
            kinds: self
                .agents
                .iter()
                .map(|(name, profile)| (name.clone(), profile.backend.kind()))
                .collect(),
            token_auth: matches!(self.github.auth, GithubAuth::Token(_)),
            not_for_repos: self
                .agents
                .iter()
                .filter(|(_, profile)| !profile.repo_triggers)
                .map(|(name, profile)| (name.clone(), profile.held().join(", ")))
                .collect(),
        }
    }

    /// How workers claim jobs: the lease, the hourly cap, and the concurrency limits per repository and per
    /// agent profile.
    pub fn claim_policy(&self) -> crate::store::ClaimPolicy {
        crate::store::ClaimPolicy {
            lease: self.job_lease,
            jobs_per_hour: self.max_jobs_per_hour,
            max_concurrent_per_repo: self.max_concurrent_per_repo,
            max_concurrent: std::sync::Arc::new(self.max_concurrent.clone()),
        }
    }

    /// The webhook secrets, or a clear error when there are none: nightshift never accepts unsigned deliveries.
    pub fn require_webhook_secrets(&self) -> anyhow::Result<&[SecretString]> {
        if self.github.webhook_secrets.is_empty() {
            anyhow::bail!(
                "no webhook secret configured: set NIGHTSHIFT_WEBHOOK_SECRET or github.webhook_secrets in the \
                 config file (nightshift refuses unsigned webhooks)"
            );
        }
        Ok(&self.github.webhook_secrets)
    }
}

fn resolve(
    file: ConfigFile,
    path: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Diagnostics> {
    let mut errors = Vec::new();
    let env_error = |name: &str, message: String| Diagnostic::new(Path::new(name), 1, 1, message);
    // Paths are made absolute here: agents and git run in other working directories.
    let rel = |p: PathBuf| {
        let p = if p.is_relative() { base.join(p) } else { p };
        std::path::absolute(&p).unwrap_or(p)
    };

    let listen = match env("NIGHTSHIFT_LISTEN") {
        Some(v) => v.parse().unwrap_or_else(|e| {
            errors.push(env_error(
                "NIGHTSHIFT_LISTEN",
                format!("`{v}` is not an address: {e}"),
            ));
            default_listen()
        }),
        None => match &file.listen {
            Some(l) => l.value.parse().unwrap_or_else(|e| {
                errors.push(
                    Diagnostic::at(
                        path,
                        l.referenced,
                        format!("`{}` is not an address: {e}", l.value),
                    )
                    .with_hint("write host:port, e.g. 0.0.0.0:3000"),
                );
                default_listen()
            }),
            None => default_listen(),
        },
    };

    let workers = match &file.workers {
        Some(w) if w.value == 0 => {
            errors.push(Diagnostic::at(
                path,
                w.referenced,
                "workers must be at least 1",
            ));
            1
        }
        Some(w) => w.value,
        None => default_workers(),
    };

    let max_concurrent_per_repo = match &file.max_concurrent_per_repo {
        Some(m) if m.value == 0 => {
            errors.push(
                Diagnostic::at(
                    path,
                    m.referenced,
                    "max_concurrent_per_repo must be at least 1",
                )
                .with_hint("leave it out for no cap of its own"),
            );
            None
        }
        other => other.as_ref().map(|m| m.value),
    };

    let store = env("NIGHTSHIFT_STORE")
        .or(file.store)
        .unwrap_or_else(default_store);
    let store = match store.strip_prefix("sqlite://") {
        Some(p) if Path::new(p).is_relative() && !p.starts_with(':') => {
            format!("sqlite://{}", rel(PathBuf::from(p)).display())
        }
        _ => store,
    };

    let github = file.github;
    let github_bot_login = github.bot_login.clone();
    let github_timeout = github.timeout.unwrap_or(Duration::from_secs(30));
    let api_url = env("NIGHTSHIFT_GITHUB_API_URL")
        .or(github.api_url)
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let web_url = env("NIGHTSHIFT_GITHUB_WEB_URL")
        .or(github.web_url)
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| DEFAULT_WEB_URL.to_owned());
    let webhook_secrets: Vec<SecretString> = match env("NIGHTSHIFT_WEBHOOK_SECRET") {
        Some(v) => v
            .lines()
            .filter(|l| !l.is_empty())
            .map(SecretString::from)
            .collect(),
        None => github
            .webhook_secrets
            .into_iter()
            .map(SecretString::from)
            .collect(),
    };
    let app_id = match env("NIGHTSHIFT_GITHUB_APP_ID") {
        Some(v) => match v.trim().parse() {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(env_error(
                    "NIGHTSHIFT_GITHUB_APP_ID",
                    format!("`{v}` is not a number"),
                ));
                None
            }
        },
        None => github.app_id,
    };
    let mut secret_files = vec![rel(path.to_owned())];
    match env("NIGHTSHIFT_GITHUB_PRIVATE_KEY") {
        Some(v) if !v.trim_start().starts_with("-----BEGIN") => {
            secret_files.push(rel(PathBuf::from(v.trim())))
        }
        Some(_) => {}
        None => secret_files.extend(github.private_key.clone().map(&rel)),
    }
    let private_key = match env("NIGHTSHIFT_GITHUB_PRIVATE_KEY") {
        Some(v) if v.trim_start().starts_with("-----BEGIN") => Some(Ok(v)),
        Some(v) => {
            Some(read_key(Path::new(&v)).map_err(|e| env_error("NIGHTSHIFT_GITHUB_PRIVATE_KEY", e)))
        }
        None => github.private_key.map(|p| {
            read_key(&rel(p))
                .map_err(|e| Diagnostic::new(path, 1, 1, format!("github.private_key: {e}")))
        }),
    };
    let token = env("NIGHTSHIFT_GITHUB_TOKEN").or(github.token);
    let auth = match (app_id, private_key, token) {
        (Some(app_id), Some(Ok(pem)), _) => GithubAuth::App {
            app_id,
            private_key_pem: SecretString::from(pem),
        },
        (_, Some(Err(e)), _) => {
            errors.push(e);
            GithubAuth::None
        }
        (Some(_), None, _) => {
            errors.push(
                Diagnostic::new(
                    path,
                    1,
                    1,
                    "github.app_id is set but there is no private key",
                )
                .with_hint("set github.private_key or NIGHTSHIFT_GITHUB_PRIVATE_KEY (PEM or path)"),
            );
            GithubAuth::None
        }
        (None, Some(Ok(_)), _) => {
            errors.push(
                Diagnostic::new(
                    path,
                    1,
                    1,
                    "a GitHub App private key is set but there is no app id",
                )
                .with_hint("set github.app_id or NIGHTSHIFT_GITHUB_APP_ID"),
            );
            GithubAuth::None
        }
        (None, None, Some(token)) => GithubAuth::Token(SecretString::from(token)),
        (None, None, None) => GithubAuth::None,
    };

    let mut file_roots = Vec::new();
    for root in &file.git.file_roots {
        match std::fs::canonicalize(rel(PathBuf::from(&root.value))) {
            Ok(p) => file_roots.push(p),
            Err(e) => errors.push(
                Diagnostic::at(
                    path,
                    root.referenced,
                    format!("git.file_roots: `{}` cannot be used: {e}", root.value),
                )
                .with_hint("name an existing folder; local repositories under it may be cloned"),
            ),
        }
    }
    let git = crate::repo::git::GitPolicy {
        file_roots,
        http_hosts: file
            .git
            .http_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        timeout: file
            .git
            .timeout
            .unwrap_or(crate::repo::git::DEFAULT_TIMEOUT),
    };

    let data_dir = rel(file.data_dir.clone().unwrap_or_else(default_data_dir));
    let mut agents = BTreeMap::new();
    let mut max_concurrent = BTreeMap::new();
    for (name, profile) in file.agents {
        if let Some(m) = &profile.value.max_concurrent {
            max_concurrent.insert(name.clone(), m.value);
        }
        match agent_profile(&name, profile, path, &rel, &data_dir) {
            Ok(profile) => {
                agents.insert(name, profile);
            }
            Err(mut more) => errors.append(&mut more),
        }
    }

    let gateway = crate::gateway::config::GatewayConfig::resolve(
        file.gateway,
        file.budgets,
        path,
        &mut errors,
    );

    let limits = match file.limits.map(crate::trigger::model::LimitsFile::check) {
        None => crate::trigger::model::Limits::default(),
        Some(Ok(limits)) => limits,
        Some(Err(problems)) => {
            for (at, message, hint) in problems {
                let d = Diagnostic::at(path, at, format!("limits: {message}"));
                errors.push(match hint {
                    Some(hint) => d.with_hint(hint),
                    None => d,
                });
            }
            crate::trigger::model::Limits::default()
        }
    };

    let mut verify = Vec::new();
    for entry in file.verify {
        match entry.check() {
            Ok(d) => verify.push(d),
            Err(problems) => {
                for (at, message, hint) in problems {
                    let d = Diagnostic::at(path, at, format!("verify: {message}"));
                    errors.push(match hint {
                        Some(hint) => d.with_hint(hint),
                        None => d,
                    });
                }
            }
        }
    }

    let dashboard = DashboardConfig::resolve(file.dashboard, env).unwrap_or_else(|message| {
        errors.push(Diagnostic::new(path, 1, 1, message));
        DashboardConfig::default()
    });

    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    Ok(Config {
        listen,
        store,
        data_dir,
        triggers: rel(file.triggers.unwrap_or_else(|| PathBuf::from("triggers"))),
        skills: rel(file.skills.unwrap_or_else(|| PathBuf::from("skills"))),
        workers,
        job_lease: file.job_lease.unwrap_or_else(default_job_lease),
        max_attempts: file
            .max_attempts
            .unwrap_or_else(default_max_attempts)
            .max(1),
        shutdown_grace: file.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        max_depth: file.max_depth.unwrap_or(DEFAULT_MAX_DEPTH),
        repo_triggers: file.repo_triggers.unwrap_or(true),
        report_failures: file.report_failures.unwrap_or(true),
        max_job_log: file.max_job_log.unwrap_or(DEFAULT_MAX_JOB_LOG),
        min_free_disk: file.min_free_disk.map(|s| s.0),
        github: GithubConfig {
            api_url,
            web_url,
            timeout: github_timeout,
            bot_login: github_bot_login,
            auth,
            webhook_secrets,
        },
        git,
        agents,
        gateway,
        secret_files,
        public_url: file
            .public_url
            .map(|u| u.trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty()),
        retry: RetryPolicy {
            max: file.retry.max.unwrap_or(RetryPolicy::default().max),
            backoff: file.retry.backoff.unwrap_or(RetryPolicy::default().backoff),
        },
        max_jobs_per_hour: file.max_jobs_per_hour.unwrap_or(100).max(1),
        max_concurrent_per_repo,
        max_concurrent,
        prune: crate::store::PrunePolicy {
            payloads: file.prune.payloads.unwrap_or(DEFAULT_PRUNE.payloads),
            logs: file.prune.logs.unwrap_or(DEFAULT_PRUNE.logs),
            jobs: file.prune.jobs.unwrap_or(DEFAULT_PRUNE.jobs),
        },
        limits,
        verify,
        ingest: file.ingest.resolve(),
        log_format: file.log_format.unwrap_or_default(),
        metrics_token: env("NIGHTSHIFT_METRICS_TOKEN")
            .or(file.metrics.token)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        dashboard,
    })
}

/// Checks one profile: exactly one backend, and only the limits that backend can keep.
fn agent_profile(
    name: &str,
    spanned: Spanned<AgentFile>,
    path: &Path,
    rel: &dyn Fn(PathBuf) -> PathBuf,
    data_dir: &Path,
) -> Result<AgentProfile, Vec<Diagnostic>> {
    let at = spanned.referenced;
    let file = spanned.value;
    let mut errors = Vec::new();
    let mut chosen = Vec::new();
    if let Some(mut argv) = file.command {
        if argv.is_empty() {
            errors.push(
                Diagnostic::at(path, at, format!("agent `{name}` has an empty command"))
                    .with_hint("write the program and its arguments, e.g. command: [\"./agent.sh\", \"--fast\"]"),
            );
        } else {
            // A relative program path means "next to the config file": the agent runs inside a worktree,
            // where a relative path would not resolve.
            if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
                argv[0] = rel(PathBuf::from(&argv[0])).display().to_string();
            }
            chosen.push(Backend::Command(argv));
        }
    }
    let cli = |file: CliFile, program: &str, key: &str, errors: &mut Vec<Diagnostic>| {
        let permission_mode = match file.permission_mode {
            None => "acceptEdits".to_owned(),
            Some(mode) if CLAUDE_PERMISSION_MODES.contains(&mode.value.as_str()) => mode.value,
            Some(mode) => {
                errors.push(
                    Diagnostic::at(
                        path,
                        mode.referenced,
                        format!(
                            "`{}` is not a permission mode nightshift can use",
                            mode.value
                        ),
                    )
                    .with_hint(format!(
                        "one of {} (a job cannot answer a permission prompt)",
                        CLAUDE_PERMISSION_MODES.join(", ")
                    )),
                );
                String::new()
            }
        };
        CliOptions {
            program: file
                .program
                .map(|p| {
                    if p.contains('/') && Path::new(&p).is_relative() {
                        rel(PathBuf::from(p)).display().to_string()
                    } else {
                        p
                    }
                })
                .unwrap_or_else(|| program.to_owned()),
            model: file.model,
            base_url: file.base_url.map(|u| u.trim_end_matches('/').to_owned()),
            api_key_env: file.api_key_env.unwrap_or_else(|| key.to_owned()),
            permission_mode,
            bearer: file.bearer,
            allowed_tools: file.allowed_tools,
            args: file.args,
        }
    };
    if let Some(codex) = file.codex {
        if codex.permission_mode.is_some() || !codex.allowed_tools.is_empty() || codex.bearer {
            errors.push(
                Diagnostic::at(
                    path,
                    at,
                    format!("agent `{name}`: permission_mode, allowed_tools and bearer are Claude Code's"),
                )
                .with_hint("Codex runs with approval_policy=never in its workspace-write sandbox"),
            );
        }
        chosen.push(Backend::Codex(cli(
            codex,
            "codex",
            "OPENAI_API_KEY",
            &mut errors,
        )));
    }
    if let Some(claude) = file.claude {
        chosen.push(Backend::Claude(cli(
            claude,
            "claude",
            "ANTHROPIC_API_KEY",
            &mut errors,
        )));
    }
    if let Some(endpoint) = file.openai {
        chosen.push(Backend::OpenAi(EndpointOptions {
            model: endpoint.model,
            base_url: endpoint
                .base_url
                .unwrap_or_else(|| OPENAI_BASE_URL.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            api_key_env: endpoint.api_key_env,
            system: endpoint.system,
            temperature: endpoint.temperature,
        }));
    }
    if chosen.len() > 1 {
        let kinds: Vec<&str> = chosen.iter().map(Backend::kind).collect();
        errors.push(
            Diagnostic::at(
                path,
                at,
                format!("agent `{name}` has {}", kinds.join(" and ")),
            )
            .with_hint("a profile runs one backend: keep one of command, codex, claude, openai"),
        );
    }
    let backend = chosen.into_iter().next();
    if backend.is_none() && errors.is_empty() {
        errors.push(
            Diagnostic::at(path, at, format!("agent `{name}` says nothing to run"))
                .with_hint("give it one of command: [argv], codex: {model: ...}, claude: {model: ...}, openai: {model: ...}"),
        );
    }
    let kind = backend.as_ref().map(Backend::kind).unwrap_or("command");
    let unsupported = |key: &str, line_col: serde_saphyr::Location, only: &str| {
        Diagnostic::at(
            path,
            line_col,
            format!("agent `{name}`: `{key}` is not something the {kind} backend can keep"),
        )
        .with_hint(format!("{key} works with {only}"))
    };
    if let Some(turns) = &file.max_turns
        && kind != "claude"
    {
        errors.push(unsupported(
            "max_turns",
            turns.referenced,
            "claude (--max-turns)",
        ));
    }
    // The model gateway keeps these for every backend that talks to a model.
    for (key, at) in [
        (
            "max_cost_usd",
            file.max_cost_usd.as_ref().map(|c| c.referenced),
        ),
        ("max_tokens", file.max_tokens.as_ref().map(|t| t.referenced)),
    ] {
        if let Some(at) = at
            && kind == "command"
        {
            errors.push(unsupported(
                key,
                at,
                "codex, claude and openai (the model gateway counts their tokens and cost)",
            ));
        }
    }
    if let Some(cost) = &file.max_cost_usd
        && !(cost.value.is_finite() && cost.value > 0.0)
    {
        errors.push(
            Diagnostic::at(
                path,
                cost.referenced,
                format!("agent `{name}`: max_cost_usd must be more than 0"),
            )
            .with_hint("dollars per job, e.g. 2.5"),
        );
    }
    if let Some(via) = &file.prompt_via
        && kind != "command"
    {
        errors.push(
            Diagnostic::at(
                path,
                via.referenced,
                format!("agent `{name}`: `prompt_via` is for command agents"),
            )
            .with_hint("the built-in backends always get the prompt on stdin or in the request"),
        );
    }
    if kind == "openai" {
        for (key, given) in [
            ("sandbox", file.sandbox.as_ref().map(|s| s.referenced)),
            ("limits", file.limits.as_ref().map(|l| l.referenced)),
            ("shared", file.shared.as_ref().map(|l| l.referenced)),
        ] {
            if let Some(at) = given {
                errors.push(
                    Diagnostic::at(
                        path,
                        at,
                        format!("agent `{name}`: `{key}` is for agents that run a program"),
                    )
                    .with_hint(
                        "a model endpoint runs no program: nightshift sends the request itself",
                    ),
                );
            }
        }
    }
    if let Some(network) = &file.network {
        errors.push(
            Diagnostic::at(
                path,
                network.referenced,
                format!("agent `{name}`: `network` is replaced by `egress`"),
            )
            .with_hint(
                "list the hosts the agent may reach over HTTPS through nightshift, e.g. egress: \
                 [registry.npmjs.org, \"*.crates.io\"]; without it the agent reaches only nightshift",
            ),
        );
    }
    for host in &file.egress {
        if let Err(why) = crate::gateway::config::check_pattern(&host.value) {
            errors.push(
                Diagnostic::at(
                    path,
                    host.referenced,
                    format!("agent `{name}`: egress `{}` {why}", host.value),
                )
                .with_hint("a host name (registry.npmjs.org) or every host under a domain (\"*.crates.io\"); the port is 443"),
            );
        }
    }
    if !file.egress.is_empty() && kind == "openai" {
        errors.push(
            Diagnostic::at(
                path,
                at,
                format!("agent `{name}`: `egress` is for agents that run a program"),
            )
            .with_hint("a model endpoint runs no program"),
        );
    }
    let mut shared = crate::sandbox::Shared::default();
    if let Some(given) = file.shared {
        for (list, into) in [
            (given.value.read_only, &mut shared.read_only),
            (given.value.writable, &mut shared.writable),
        ] {
            for folder in list.into_iter().map(rel) {
                if folder.starts_with(data_dir) {
                    errors.push(
                        Diagnostic::at(
                            path,
                            given.referenced,
                            format!(
                                "agent `{name}`: `shared` names {}, inside the data dir",
                                folder.display()
                            ),
                        )
                        .with_hint(
                            "the data dir holds every repository's mirror and every job: share a folder outside it",
                        ),
                    );
                }
                into.push(folder);
            }
        }
    }
    if let Some(m) = &file.max_concurrent
        && m.value == 0
    {
        errors.push(
            Diagnostic::at(
                path,
                m.referenced,
                format!("agent `{name}`: max_concurrent must be at least 1"),
            )
            .with_hint("leave it out for no limit of its own (`workers` still bounds it)"),
        );
    }
    let sandbox = file.sandbox.map(|s| s.value).unwrap_or_default();
    let repo_triggers = match &file.repo_triggers {
        Some(given) if given.value && sandbox == SandboxKind::None => {
            errors.push(
                Diagnostic::at(
                    path,
                    given.referenced,
                    format!(
                        "agent `{name}`: a profile with `sandbox: none` cannot be used by repository triggers"
                    ),
                )
                .with_hint(
                    "whoever can push a repository's default branch writes its triggers: an unboxed agent \
                     would run their prompt on the service's machine; leave repo_triggers out",
                ),
            );
            false
        }
        Some(given) => given.value,
        None => {
            sandbox != SandboxKind::None
                && file.env.is_empty()
                && file.egress.is_empty()
                && shared.read_only.is_empty()
                && shared.writable.is_empty()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AgentProfile {
        shared,
        repo_triggers,
        backend: backend.expect("checked above"),
        timeout: file.timeout.unwrap_or_else(default_agent_timeout),
        env: file.env,
        max_output: file.max_output.unwrap_or_else(default_max_output),
        sandbox,
        limits: file.limits.map(|l| l.value.resolve()).unwrap_or_default(),
        egress: file.egress.into_iter().map(|h| h.value).collect(),
        max_turns: file.max_turns.map(|t| t.value),
        max_tokens: file.max_tokens.map(|t| t.value),
        max_cost_usd: file.max_cost_usd.map(|c| c.value),
        prompt_via: file.prompt_via.map(|p| p.value).unwrap_or_default(),
    })
}

fn read_key(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read private key {}: {e}", path.display()))
}

/// Parses `dashboard.trusted_proxies`: addresses (`10.0.0.5`) or networks (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_proxies(items: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    items
        .iter()
        .map(|item| {
            let item = item.trim();
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!(
                        "dashboard.trusted_proxies: `{item}` is not an address or a network (write 10.0.0.5 or 10.0.0.0/8)"
                    )
                })
        })
        .collect()
}

/// Whether `url` is an https address (the scheme in any case).
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use octocrab::secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, Diagnostics> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nightshift.yml");
        std::fs::write(&path, text).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.get(k).cloned();
        Config::load(&ConfigSource {
            path: &path,
            required: true,
            env: &lookup,
        })
    }

    #[test]
    fn defaults_apply_when_the_file_is_missing_and_optional() {
        let none = |_: &str| None;
        let config = Config::load(&ConfigSource {
            path: Path::new("/nonexistent/nightshift.yml"),
            required: false,
            env: &none,
        })
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.workers, 4);
        assert!(config.report_failures);
        assert_eq!(config.github.api_url, "https://api.github.com");
        assert!(config.store.starts_with("sqlite://"));
        assert!(config.store.ends_with(".nightshift/nightshift.db"));
        assert!(matches!(config.github.auth, GithubAuth::None));
        assert!(config.require_webhook_secrets().is_err());
    }

    #[test]
    fn git_file_roots_must_exist_and_name_where_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(
            &format!(
                "git:\n  file_roots: [{}]\n  http_hosts: [LocalHost]\n  timeout: 90s\n",
                dir.path().display()
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            config.git.file_roots,
            vec![std::fs::canonicalize(dir.path()).unwrap()]
        );
        assert_eq!(config.git.http_hosts, vec!["localhost".to_owned()]);
        assert_eq!(config.git.timeout, Duration::from_secs(90));
        assert!(load("", &[]).unwrap().git.file_roots.is_empty());

        let err = load("git:\n  file_roots:\n    - /nonexistent/roots\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("nightshift.yml:3:"), "{text}");
        assert!(
            text.contains("git.file_roots: `/nonexistent/roots` cannot be used"),
            "{text}"
        );
    }

    #[test]
    fn log_format_and_the_metrics_token() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.metrics_token.is_none(), "open by default");
        let config = load("log_format: json\nmetrics:\n  token: from-file\n", &[]).unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.metrics_token.unwrap().expose_secret(), "from-file");
        let config = load(
            "metrics:\n  token: from-file\n",
            &[("NIGHTSHIFT_METRICS_TOKEN", "from-env\n")],
        )
        .unwrap();
        assert_eq!(config.metrics_token.unwrap().expose_secret(), "from-env");
        let text = load("log_format: xml\n", &[]).unwrap_err().to_string();
        assert!(text.contains("nightshift.yml:1:"), "{text}");
        assert!(load("metrics:\n  tokn: x\n", &[]).is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "listen: 127.0.0.1:1\ngithub:\n  token: from-file\n  webhook_secrets: [a, b]\n",
            &[
                ("NIGHTSHIFT_LISTEN", "0.0.0.0:8080"),
                ("NIGHTSHIFT_GITHUB_TOKEN", "from-env"),
                ("NIGHTSHIFT_WEBHOOK_SECRET", "new\nold"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.port(), 8080);
        let GithubAuth::Token(token) = &config.github.auth else {
            panic!("token auth expected")
        };
        assert_eq!(token.expose_secret(), "from-env");
        let secrets: Vec<_> = config
            .github
            .webhook_secrets
            .iter()
            .map(|s| s.expose_secret().to_owned())
            .collect();
        assert_eq!(secrets, ["new", "old"]);
    }

    #[test]
    fn agent_profiles_parse_timeouts() {
        let config = load(
            "agents:\n  echo:\n    command: [cat]\n    timeout: 90s\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.agents["echo"].timeout, Duration::from_secs(90));
        assert_eq!(
            config.agents["echo"].backend,
            Backend::Command(vec!["cat".into()])
        );
    }

    #[test]
    fn bad_files_report_every_problem_with_positions() {
        let errors = load(
            "listen: nowhere\nworkers: 0\nagents:\n  x:\n    command: []\n",
            &[],
        )
        .unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 3, "{text}");
        assert!(
            text.contains("nightshift.yml:1:9: error: `nowhere` is not an address"),
            "{text}"
        );
        assert!(
            text.contains(":2:10: error: workers must be at least 1"),
            "{text}"
        );
        assert!(text.contains("agent `x` has an empty command"), "{text}");
    }

    #[test]
    fn retention_and_concurrency_limits_parse_with_their_defaults() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.prune, DEFAULT_PRUNE);
        assert_eq!(config.max_concurrent_per_repo, None);
        let policy = config.claim_policy();
        assert!(policy.max_concurrent.is_empty());

        let config = load(
            "prune:\n  payloads: 7d\n  jobs: 1y\nmax_concurrent_per_repo: 2\n\
             agents:\n  claude: {command: [x], max_concurrent: 1}\n  other: {command: [y]}\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.prune.payloads, Duration::from_secs(7 * 86_400));
        assert_eq!(config.prune.logs, DEFAULT_PRUNE.logs);
        assert!(config.prune.jobs > Duration::from_secs(364 * 86_400));
        let policy = config.claim_policy();
        assert_eq!(policy.max_concurrent_per_repo, Some(2));
        assert_eq!(
            policy.max_concurrent.iter().collect::<Vec<_>>(),
            [(&"claude".to_owned(), &1)]
        );

        let text = load(
            "max_concurrent_per_repo: 0\nagents:\n  a: {command: [x], max_concurrent: 0}\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("max_concurrent_per_repo must be at least 1"),
            "{text}"
        );
        assert!(
            text.contains("agent `a`: max_concurrent must be at least 1"),
            "{text}"
        );
        let text = load("prune: {logs: soon}\n", &[]).unwrap_err().to_string();
        assert!(text.contains("`soon` is not a duration"), "{text}");
    }

    #[test]
    fn unknown_keys_are_named_with_a_hint() {
        let errors = load("github:\n  webhook_secret: x\n", &[]).unwrap_err();
        let text = errors.to_string();
        assert!(
            text.contains(":2:3: error: unknown field `webhook_secret`"),
            "{text}"
        );
        assert!(text.contains("did you mean `webhook_secrets`?"), "{text}");
    }

    #[test]
    fn app_id_without_key_is_an_error_not_a_panic() {
        let errors = load("github:\n  app_id: 12\n", &[]).unwrap_err();
        assert!(errors.to_string().contains("no private key"));
        let errors =
            load("", &[("NIGHTSHIFT_GITHUB_PRIVATE_KEY", "/nonexistent.pem")]).unwrap_err();
        assert!(
            errors.to_string().contains("NIGHTSHIFT_GITHUB_PRIVATE_KEY"),
            "{errors}"
        );
    }

    #[test]
    fn built_in_backends_parse_with_their_defaults() {
        let config = load(
            "agents:\n  fixer:\n    codex: {model: gpt-5.5, base_url: 'https://gw.example/v1/'}\n  \
             reviewer:\n    claude: {model: sonnet, allowed_tools: [Read]}\n    max_turns: 8\n  \
             local:\n    openai: {model: llama3, base_url: 'http://localhost:11434/v1'}\n    max_tokens: 500\n",
            &[],
        )
        .unwrap();
        let Backend::Codex(codex) = &config.agents["fixer"].backend else {
            panic!("codex expected")
        };
        assert_eq!(codex.program, "codex");
        assert_eq!(codex.api_key_env, "OPENAI_API_KEY");
        assert_eq!(codex.base_url.as_deref(), Some("https://gw.example/v1"));
        let Backend::Claude(claude) = &config.agents["reviewer"].backend else {
            panic!("claude expected")
        };
        assert_eq!(claude.api_key_env, "ANTHROPIC_API_KEY");
        assert_eq!(claude.permission_mode, "acceptEdits");
        assert_eq!(config.agents["reviewer"].max_turns, Some(8));
        let Backend::OpenAi(local) = &config.agents["local"].backend else {
            panic!("openai expected")
        };
        assert_eq!(local.api_key_env, None);
        assert_eq!(config.agents["local"].max_tokens, Some(500));
        assert_eq!(config.agents["local"].prompt_via, PromptVia::Stdin);
        let config = load(
            "agents:\n  s:\n    command: [x]\n    prompt_via: file\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.agents["s"].prompt_via, PromptVia::File);
        let errors = load(
            "agents:\n  s:\n    command: [x]\n    prompt_via: argv\n",
            &[],
        )
        .unwrap_err();
        assert!(
            errors
                .to_string()
                .contains(":4:17: error: unknown variant `argv`"),
            "{errors}"
        );
    }

    #[test]
    fn a_profile_runs_exactly_one_backend_and_only_limits_it_can_keep() {
        let errors = load(
            "agents:\n  both:\n    command: [x]\n    codex: {}\n  none:\n    timeout: 5m\n  \
             turns:\n    codex: {}\n    max_turns: 3\n  boxed:\n    openai: {model: m}\n    sandbox: bubblewrap\n  \
             asks:\n    claude: {permission_mode: default}\n",
            &[],
        )
        .unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 5, "{text}");
        assert!(
            text.contains("agent `both` has command and codex"),
            "{text}"
        );
        assert!(text.contains("agent `none` says nothing to run"), "{text}");
        assert!(
            text.contains(":9:16: error: agent `turns`: `max_turns` is not something the codex backend can keep"),
            "{text}"
        );
        assert!(text.contains("hint: max_turns works with claude"), "{text}");
        assert!(
            text.contains("agent `boxed`: `sandbox` is for agents that run a program"),
            "{text}"
        );
        assert!(
            text.contains("`default` is not a permission mode nightshift can use"),
            "{text}"
        );
    }

    #[test]
    fn repository_triggers_may_use_only_profiles_that_hold_nothing_more_unless_they_say_so() {
        let config = load(
            "agents:\n  plain:\n    codex: {}\n  secrets:\n    command: [x]\n    env: [NPM_TOKEN]\n  \
             hosts:\n    command: [x]\n    egress: [registry.npmjs.org]\n  cache:\n    command: [x]\n    \
             shared: {writable: [/var/cache/x]}\n  bare:\n    claude: {}\n    sandbox: none\n  \
             opted:\n    command: [x]\n    env: [DOCS_TOKEN]\n    repo_triggers: true\n  \
             closed:\n    command: [x]\n    repo_triggers: false\n",
            &[],
        )
        .unwrap();
        let kinds = config.agent_kinds();
        let refused: Vec<&str> = kinds.not_for_repos.keys().map(String::as_str).collect();
        assert_eq!(refused, ["bare", "cache", "closed", "hosts", "secrets"]);
        assert!(kinds.not_for_repos["secrets"].contains("env:"));
        assert!(kinds.not_for_repos["bare"].contains("sandbox: none"));
        assert!(kinds.not_for_repos["closed"].is_empty());
        let errors = load(
            "agents:\n  bare:\n    command: [x]\n    sandbox: none\n    repo_triggers: true\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains(":5:20: error: agent `bare`: a profile with `sandbox: none` cannot be used by repository triggers"),
            "{errors}"
        );
    }

    #[test]
    fn every_program_runs_boxed_unless_the_profile_says_none_and_limits_have_units() {
        let config = load(
            "agents:\n  a:\n    codex: {}\n  b:\n    claude: {}\n    sandbox: none\n  \
             c:\n    command: [x]\n    limits: {processes: 64, memory: 512M, file_size: 1GiB, open_files: 100}\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.agents["a"].sandbox, SandboxKind::Bubblewrap);
        assert_eq!(config.agents["b"].sandbox, SandboxKind::None);
        let c = &config.agents["c"];
        assert_eq!(c.sandbox, SandboxKind::Bubblewrap);
        assert_eq!(
            c.limits,
            crate::sandbox::Limits {
                processes: 64,
                memory: 512 << 20,
                file_size: 1 << 30,
                open_files: 100,
                ..Default::default()
            }
        );
        let errors = load(
            "agents:\n  c:\n    command: [x]\n    limits: {memory: lots}\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(errors.contains("`lots` is not a size"), "{errors}");
        let config = load(
            "data_dir: /srv/ns/data\nagents:\n  c:\n    command: [x]\n    shared: {read_only: [/opt/tools], writable: [/var/cache/cargo]}\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.agents["c"].shared.read_only,
            [PathBuf::from("/opt/tools")]
        );
        assert_eq!(
            config.agents["c"].shared.writable,
            [PathBuf::from("/var/cache/cargo")]
        );
        let errors = load(
            "data_dir: /srv/ns/data\nagents:\n  c:\n    command: [x]\n    shared: {writable: [/srv/ns/data/mirrors]}\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("`shared` names /srv/ns/data/mirrors, inside the data dir"),
            "{errors}"
        );
    }

    #[test]
    fn network_is_replaced_by_an_egress_allow_list_of_host_names() {
        let config = load(
            "agents:\n  a:\n    command: [x]\n    egress: [registry.npmjs.org, '*.crates.io']\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.agents["a"].egress,
            ["registry.npmjs.org", "*.crates.io"]
        );
        let errors = load(
            "agents:\n  a:\n    command: [x]\n    network: true\n  b:\n    command: [x]\n    egress: ['https://x.io', '*']\n",
            &[],
        )
        .unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 3, "{text}");
        assert!(
            text.contains(":4:14: error: agent `a`: `network` is replaced by `egress`"),
            "{text}"
        );
        assert!(
            text.contains("hint: list the hosts the agent may reach over HTTPS"),
            "{text}"
        );
        assert!(
            text.contains("egress `https://x.io` has a scheme, port or path"),
            "{text}"
        );
        assert!(text.contains("egress `*` is not a host name"), "{text}");
    }
}
