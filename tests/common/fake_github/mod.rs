//! A stateful fake of the GitHub REST API, built from GitHub's own OpenAPI description and response examples
//! (tests/fixtures/openapi). It knows only the operations in that description (extra_operations.json, see
//! extract_extra.py); a request for anything else, a request whose body or query GitHub's schema refuses, or a
//! request without valid credentials is recorded as unexpected (and answered as GitHub would), and tests assert
//! there were none.
//!
//! It keeps objects as GitHub does (comments, issues and pull requests sharing a repository's numbers, reviews,
//! check runs, reactions), enforces GitHub's rules on them (one open pull request per head, a review on the head
//! commit and on lines of the diff, ...), paginates lists with `Link` headers, and injects faults on demand or at
//! a seeded rate: 502 before or after the write, rate limits, a connection dropped or hung after the write, and
//! outages. Answers GitHub would give by its rules (not faults) are kept in [`FakeGitHub::refusals`].

pub mod diff;
pub mod manifest;
mod oauth;
mod ops;

pub use diff::diff_lines;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

const EXAMPLES: &str = include_str!("../../fixtures/openapi/response_examples.json");
/// Every operation the fake serves, with its parameters and fully resolved request-body JSON Schema, extracted
/// from GitHub's OpenAPI description by tests/fixtures/openapi/extract_extra.py.
const EXTRA: &str = include_str!("../../fixtures/openapi/extra_operations.json");

/// The login GET /user answers with (token mode).
pub const TOKEN_LOGIN: &str = "nightshift-user";
/// The App's login: `apps/get-authenticated` answers slug `nightshift-test`.
pub const APP_LOGIN: &str = "nightshift-test[bot]";

#[derive(Clone, Debug)]
pub struct Comment {
    pub id: u64,
    pub repo: String,
    pub number: u64,
    pub body: String,
    /// Who posted it: nightshift's own account ([`TOKEN_LOGIN`], or the App's bot) or someone else.
    pub author: String,
    pub created_at: String,
    pub updated_at: String,
    /// Every earlier body, oldest first, with who replaced it (one per edit).
    pub edits: Vec<Edit>,
}

#[derive(Clone, Debug)]
pub struct Edit {
    pub by: String,
    pub before: String,
    pub at: String,
}

#[derive(Clone, Debug)]
pub struct Issue {
    pub number: u64,
    pub repo: String,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    /// `open` or `closed`.
    pub state: String,
    pub author: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug)]
pub struct Pull {
    pub number: u64,
    pub repo: String,
    pub title: String,
    /// The head branch's name.
    pub head: String,
    pub base: String,
    pub body: String,
    pub head_sha: String,
    /// The repository the head branch is in (`owner/name`): another one for a pull request from a fork.
    pub head_repo: String,
    pub draft: bool,
    /// `open` or `closed`.
    pub state: String,
    pub merged: bool,
    pub author: String,
    pub labels: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug)]
pub struct PullFile {
    pub filename: String,
    /// `added`, `modified`, `removed`, `renamed`...
    pub status: String,
    /// The unified-diff hunks GitHub shows (None for a binary or too large file).
    pub patch: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Review {
    pub id: u64,
    pub repo: String,
    pub number: u64,
    pub commit_id: String,
    pub body: String,
    /// The event asked for (`COMMENT`, `APPROVE`, `REQUEST_CHANGES`, or empty for a pending review).
    pub event: String,
    /// The inline comments as posted.
    pub comments: Vec<Value>,
    pub author: String,
    /// Every earlier body (pulls/update-review).
    pub edits: Vec<Edit>,
}

#[derive(Clone, Debug)]
pub struct CheckRun {
    pub id: u64,
    pub repo: String,
    pub name: String,
    pub head_sha: String,
    pub external_id: Option<String>,
    pub status: String,
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    /// `title`, `summary`, `text` as last set.
    pub output: Value,
    /// Every annotation, in order (GitHub adds those of each update to the earlier ones).
    pub annotations: Vec<Value>,
    pub author: String,
    /// Each request body, the create first, then each update.
    pub history: Vec<Value>,
}

#[derive(Clone, Debug)]
pub struct Reaction {
    pub id: u64,
    pub repo: String,
    pub comment_id: u64,
    pub content: String,
    pub user: String,
}

/// An installation token as minted: what it was asked for.
#[derive(Clone, Debug)]
pub struct Mint {
    pub token: String,
    /// The request body: `repositories` and `permissions`, or Null or `{}` for an installation-wide token.
    pub body: Value,
    pub at: SystemTime,
}

/// How the fake expects nightshift to authenticate.
#[derive(Clone, Debug)]
pub enum ExpectedAuth {
    Token(String),
    App {
        app_id: u64,
    },
    /// No App yet: one is made through the manifest flow ([`manifest`]); from then on nightshift must
    /// authenticate as it, with JWTs signed by its key.
    Manifest,
}

/// Something created with a POST the fake keeps as it came: a review, an issue, a check run.
#[derive(Clone, Debug)]
pub struct Created {
    pub operation: String,
    pub repo: String,
    pub body: Value,
}

/// A fault the fake can inject into a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers this status (with GitHub's error body) before anything is applied.
    Status(u16),
    /// 502 before the write: nothing applied.
    BadGatewayBefore,
    /// The write is applied, then answered 502.
    BadGatewayAfter,
    /// 403 "You have exceeded a secondary rate limit" with `retry-after: N` (seconds); nothing applied.
    SecondaryRateLimit { retry_after: u64 },
    /// A primary rate limit: `status` (403 or 429) with `x-ratelimit-remaining: 0` and `x-ratelimit-reset` `reset_in`
    /// seconds from now; nothing applied.
    RateLimit { status: u16, reset_in: u64 },
    /// The write is applied, then the connection is closed without an answer.
    DropAfter,
    /// The write is applied, then nothing is answered for [`FakeGitHub::set_hang`] (default 120 s), then the
    /// connection is closed.
    HangAfter,
    /// 503, as every call meets during an [`FakeGitHub::outage`]; nothing applied.
    Outage,
}

impl From<u16> for Fault {
    fn from(status: u16) -> Fault {
        Fault::Status(status)
    }
}

impl Fault {
    /// A short name per kind, for [`FakeGitHub::fault_counts`].
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Status(_) => "status",
            Fault::BadGatewayBefore => "502-before",
            Fault::BadGatewayAfter => "502-after",
            Fault::SecondaryRateLimit { .. } => "secondary-rate-limit",
            Fault::RateLimit { .. } => "rate-limit",
            Fault::DropAfter => "drop-after",
            Fault::HangAfter => "hang-after",
            Fault::Outage => "outage",
        }
    }

    /// Whether the write is applied before the fault.
    pub fn applies(&self) -> bool {
        matches!(
            self,
            Fault::BadGatewayAfter | Fault::DropAfter | Fault::HangAfter
        )
    }
}

/// A write the fake received (POST, PATCH, PUT, DELETE) and what became of it.
#[derive(Clone, Debug)]
pub struct Write {
    pub call: String,
    pub operation: String,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// Whether the write changed the fake's state (also when a fault then hid the answer).
    pub applied: bool,
    /// The status the client was sent (None when the connection was dropped or hung).
    pub status: Option<u16>,
}

/// An answer GitHub would give by its rules: a duplicate pull request, a review off the diff, a missing issue...
#[derive(Clone, Debug)]
pub struct Refusal {
    pub call: String,
    pub status: u16,
    pub message: String,
}

#[derive(Default)]
struct FakeState {
    comments: Vec<Comment>,
    issues: Vec<Issue>,
    pulls: Vec<Pull>,
    /// The pull requests opened through pulls/create, (repo, number).
    opened: Vec<(String, u64)>,
    reviews: Vec<Review>,
    check_runs: Vec<CheckRun>,
    reactions: Vec<Reaction>,
    created: Vec<Created>,
    /// Files of each pull request (repo, number), for pulls/list-files and review lines.
    pull_files: HashMap<(String, u64), Vec<PullFile>>,
    /// Branch heads, (repo, branch) → sha, for git refs, new pull requests and check runs by branch.
    branches: HashMap<(String, String), String>,
    installation_id: Option<u64>,
    installation_tokens: Vec<String>,
    /// When each installation token stops working.
    token_expiry: HashMap<String, SystemTime>,
    /// How long a minted installation token lives (GitHub: one hour).
    token_life: Option<Duration>,
    /// Each mint: the token and the body it was asked with (Null for an installation-wide token).
    mints: Vec<Mint>,
    unexpected: Vec<String>,
    refusals: Vec<Refusal>,
    calls: Vec<String>,
    writes: Vec<Write>,
    injected: Vec<(String, Fault)>,
    next_id: u64,
    /// Operation id → faults for its next calls, first at the end.
    failures: HashMap<String, Vec<Fault>>,
    /// Probability, kinds: a fault for that share of writes.
    fault_rate: Option<(f64, Vec<Fault>)>,
    rng: u64,
    outage_until: Option<tokio::time::Instant>,
    hang: Option<Duration>,
    /// Permissions of users on repositories, (repo, lower-case login) → `admin`/`write`/`read`/`none`;
    /// anyone not listed has `read` (as on a public repository), but the owner of the repository `admin`.
    permissions: HashMap<(String, String), String>,
    /// Installations set up by [`FakeGitHub::install`]: id → (account, repositories). While there are none,
    /// every repository is installed on `installation_id` (or 1).
    installations: BTreeMap<u64, (String, Vec<String>)>,
    /// Where the App's webhook delivers, and its secret ([`FakeGitHub::set_webhook`]).
    webhook: Option<(String, String)>,
    /// The App's webhook deliveries (every attempt), oldest first.
    hook_deliveries: Vec<HookDelivery>,
    /// The status nightshift answered each attempt sent in the background (a redelivery), by id.
    attempt_status: Arc<Mutex<HashMap<u64, u16>>>,
    /// The clone URL repos/get answers for a repository ([`FakeGitHub::set_clone_url`]).
    clone_urls: HashMap<String, String>,
    /// Every manifest POSTed to the "create App" page.
    manifests: Vec<Value>,
    /// Manifests shown with their confirm button, by the form's id.
    pending: HashMap<String, manifest::Pending>,
    /// Codes handed out by the confirm button, not yet exchanged.
    codes: HashMap<String, manifest::Pending>,
    /// The App the manifest flow made.
    manifest_app: Option<manifest::ManifestApp>,
    /// Sign-in with GitHub (the dashboard): OAuth clients, the browser's user, codes, user tokens.
    oauth: oauth::OAuth,
}

/// One attempt at delivering the App's webhook, as GitHub logs it (`GET /app/hook/deliveries`).
#[derive(Clone, Debug)]
pub struct HookDelivery {
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    pub payload: Vec<u8>,
    /// What the webhook answered; 0 when it answered nothing (down).
    pub status_code: u16,
    pub delivered_at: String,
    pub redelivery: bool,
}

impl FakeState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The next issue or pull request number of `repo` (they share one sequence).
    fn number(&self, repo: &str) -> u64 {
        let issues = self
            .issues
            .iter()
            .filter(|i| i.repo == repo)
            .map(|i| i.number);
        let pulls = self
            .pulls
            .iter()
            .filter(|p| p.repo == repo)
            .map(|p| p.number);
        issues.chain(pulls).max().unwrap_or(0) + 1
    }

    /// splitmix64: deterministic for a seed.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn branch_sha(&self, repo: &str, branch: &str) -> String {
        self.branches
            .get(&(repo.to_owned(), branch.to_owned()))
            .cloned()
            .unwrap_or_else(|| fake_sha(&format!("{repo}:{branch}")))
    }
}

/// A stable 40-hex "commit" for a name the fake has no real commit for.
pub fn fake_sha(name: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(name.as_bytes()))[..40].to_owned()
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

struct Operation {
    id: String,
    method: Method,
    segments: Vec<String>,
    /// Query parameters: name → index of its compiled schema.
    query: HashMap<String, boon::SchemaIndex>,
    /// The request body's compiled schema, and whether a body is required.
    body: Option<(boon::SchemaIndex, bool)>,
}

struct Spec {
    operations: Vec<Operation>,
    schemas: boon::Schemas,
    examples: Value,
}

/// The description, compiled once per test binary.
static SPEC: LazyLock<Spec> = LazyLock::new(|| {
    let extra: Value = serde_json::from_str(EXTRA).unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    // OpenAPI 3.0 schemas are draft-4 JSON Schema (boolean exclusiveMinimum) less `nullable`, which the
    // extractor turned into `null` types.
    compiler.set_default_draft(boon::Draft::V4);
    compiler.enable_format_assertions();
    let mut compile = |location: String, schema: &Value| {
        compiler.add_resource(&location, schema.clone()).unwrap();
        compiler
            .compile(&location, &mut schemas)
            .unwrap_or_else(|e| panic!("{location}: {e:?}"))
    };
    let mut operations: Vec<Operation> = extra["operations"]
        .as_object()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(n, (id, op))| {
            let query = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| {
                    let name = p["name"].as_str().unwrap().to_owned();
                    let index = compile(format!("file:///op{n}/query/{name}.json"), &p["schema"]);
                    (name, index)
                })
                .collect();
            let body = op["requestBody"].as_object().map(|b| {
                (
                    compile(format!("file:///op{n}/body.json"), &b["schema"]),
                    b["required"] == true,
                )
            });
            Operation {
                id: id.clone(),
                method: op["method"].as_str().unwrap().parse().unwrap(),
                segments: op["path"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .map(str::to_owned)
                    .collect(),
                query,
                body,
            }
        })
        .collect();
    // Literal segments win over parameters (issues/comments/{id} before issues/{number}).
    operations.sort_by_key(|op| {
        std::cmp::Reverse(op.segments.iter().filter(|s| !s.starts_with('{')).count())
    });
    let mut examples: Value = serde_json::from_str(EXAMPLES).unwrap();
    for (name, example) in extra["examples"].as_object().unwrap() {
        examples["examples"][name] = example.clone();
    }
    Spec {
        operations,
        schemas,
        examples: examples["examples"].clone(),
    }
});

struct Inner {
    state: Mutex<FakeState>,
    auth: ExpectedAuth,
    url: String,
}

#[derive(Clone)]
pub struct FakeGitHub {
    inner: Arc<Inner>,
    pub url: String,
}

/// The service's error when a fault drops the connection: hyper then closes it without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

impl FakeGitHub {
    pub async fn start(auth: ExpectedAuth) -> FakeGitHub {
        LazyLock::force(&SPEC);
        // Tests reach the fake (and nightshift) with reqwest, which needs the process's TLS provider.
        nightshift::install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let inner = Arc::new(Inner {
            state: Mutex::new(FakeState {
                next_id: 100,
                ..Default::default()
            }),
            auth,
            url: url.clone(),
        });
        let server = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| serve(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeGitHub { inner, url }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.state.lock().unwrap()
    }

    /// The login nightshift's writes are authored by: [`APP_LOGIN`] or [`TOKEN_LOGIN`].
    pub fn own_login(&self) -> String {
        self.inner.own_login()
    }

    pub fn comments(&self) -> Vec<Comment> {
        self.state().comments.clone()
    }

    /// Issues (not pull requests), in the order they were opened.
    pub fn issues(&self) -> Vec<Issue> {
        self.state().issues.clone()
    }

    /// The pull requests nightshift opened (pulls/create), oldest first.
    pub fn pulls(&self) -> Vec<Pull> {
        let state = self.state();
        state
            .pulls
            .iter()
            .filter(|p| state.opened.contains(&(p.repo.clone(), p.number)))
            .cloned()
            .collect()
    }

    /// Every pull request the fake knows: opened by nightshift, added by a test, or learned from a payload.
    pub fn all_pulls(&self) -> Vec<Pull> {
        self.state().pulls.clone()
    }

    pub fn reviews(&self) -> Vec<Review> {
        self.state().reviews.clone()
    }

    pub fn check_runs(&self) -> Vec<CheckRun> {
        self.state().check_runs.clone()
    }

    pub fn reactions(&self) -> Vec<Reaction> {
        self.state().reactions.clone()
    }

    /// Reviews, issues and check runs created, as (operation id, repo, request body).
    pub fn created(&self) -> Vec<Created> {
        self.state().created.clone()
    }

    /// Sets the files a pull request changes (without patches: no line of them can carry a review comment).
    pub fn set_pull_files(&self, repo: &str, number: u64, files: &[&str]) {
        let files = files
            .iter()
            .map(|f| PullFile {
                filename: f.to_string(),
                status: "modified".into(),
                patch: None,
            })
            .collect();
        self.state()
            .pull_files
            .insert((repo.to_owned(), number), files);
    }

    /// Sets the files a pull request changes with their unified-diff patches, (filename, patch).
    pub fn set_pull_patches(&self, repo: &str, number: u64, files: &[(&str, &str)]) {
        let files = files
            .iter()
            .map(|(f, patch)| PullFile {
                filename: f.to_string(),
                status: "modified".into(),
                patch: Some(patch.to_string()),
            })
            .collect();
        self.state()
            .pull_files
            .insert((repo.to_owned(), number), files);
    }

    pub fn pull_files(&self, repo: &str, number: u64) -> Vec<PullFile> {
        self.state()
            .pull_files
            .get(&(repo.to_owned(), number))
            .cloned()
            .unwrap_or_default()
    }

    /// Sets a branch's head commit (git refs, new pull requests from it, check runs by branch name).
    pub fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        self.state()
            .branches
            .insert((repo.to_owned(), branch.to_owned()), sha.to_owned());
    }

    pub fn unexpected(&self) -> Vec<String> {
        self.state().unexpected.clone()
    }

    /// Answers given by GitHub's rules (duplicate pull request, review off the diff, missing issue...).
    pub fn refusals(&self) -> Vec<Refusal> {
        self.state().refusals.clone()
    }

    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Every write received, with the fault injected and whether it was applied.
    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }

    /// Faults injected, by [`Fault::kind`] (outage answers count as `outage`).
    pub fn fault_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (_, fault) in &self.state().injected {
            *counts.entry(fault.kind().to_owned()).or_default() += 1;
        }
        counts
    }

    /// Faults injected, with the call each hit.
    pub fn faults(&self) -> Vec<(String, Fault)> {
        self.state().injected.clone()
    }

    /// Every manifest POSTed to the "create App" page.
    pub fn manifests(&self) -> Vec<Value> {
        self.state().manifests.clone()
    }

    /// The App the manifest flow made, once its code was exchanged.
    pub fn manifest_app(&self) -> Option<manifest::ManifestApp> {
        self.state().manifest_app.clone()
    }

    pub fn installation_tokens(&self) -> Vec<String> {
        self.state().installation_tokens.clone()
    }

    /// Every installation token minted, with what it was asked for.
    pub fn mints(&self) -> Vec<Mint> {
        self.state().mints.clone()
    }

    /// Tokens minted from now on live `life` (and are refused after it), instead of an hour.
    pub fn set_token_life(&self, life: Duration) {
        self.state().token_life = Some(life);
    }

    /// Whether `token` is an installation token this fake minted that has not expired yet.
    pub fn token_is_live(&self, token: &str) -> bool {
        self.state().token_is_live(token)
    }

    /// Sets a user's permission on a repository (`admin`, `write`, `read`, `none`).
    pub fn set_permission(&self, repo: &str, login: &str, permission: &str) {
        self.state().permissions.insert(
            (repo.to_owned(), login.to_lowercase()),
            permission.to_owned(),
        );
    }

    /// Makes the next calls of `operation` (an OpenAPI operation id) meet these faults, in order: statuses
    /// (`&[502]`, answered before anything is applied) or [`Fault`]s.
    pub fn fail_next<F: Into<Fault> + Copy>(&self, operation: &str, faults: &[F]) {
        assert!(
            SPEC.operations.iter().any(|op| op.id == operation),
            "{operation} is not an operation of the fake"
        );
        self.state().failures.insert(
            operation.to_owned(),
            faults.iter().rev().map(|f| (*f).into()).collect(),
        );
    }

    /// From now on each write (POST, PATCH, PUT, DELETE; not installation-token minting) meets a fault with
    /// probability `p`, one of `kinds` at random; the same `seed` gives the same sequence of draws.
    pub fn set_fault_rate(&self, p: f64, seed: u64, kinds: &[Fault]) {
        let mut state = self.state();
        state.rng = seed;
        state.fault_rate = (p > 0.0 && !kinds.is_empty()).then(|| (p, kinds.to_vec()));
    }

    /// Every call (reads too) is answered 503 for `duration` from now.
    pub fn outage(&self, duration: Duration) {
        self.state().outage_until = Some(tokio::time::Instant::now() + duration);
    }

    /// Ends an outage now.
    pub fn end_outage(&self) {
        self.state().outage_until = None;
    }

    /// How long a [`Fault::HangAfter`] keeps the client waiting before closing the connection.
    pub fn set_hang(&self, hang: Duration) {
        self.state().hang = Some(hang);
    }

    /// Adds a comment as if nightshift's own account had posted it (for tests of what nightshift finds).
    pub fn add_comment(&self, repo: &str, number: u64, body: &str) -> u64 {
        let own = self.inner.own_login();
        self.add_comment_by(repo, number, &own, body)
    }

    /// Adds a comment as if `author` had posted it; its id.
    pub fn add_comment_by(&self, repo: &str, number: u64, author: &str, body: &str) -> u64 {
        let mut state = self.state();
        let id = state.id();
        let at = now();
        state.comments.push(Comment {
            id,
            repo: repo.to_owned(),
            number,
            body: body.to_owned(),
            author: author.to_owned(),
            created_at: at.clone(),
            updated_at: at,
            edits: vec![],
        });
        id
    }

    /// Opens an issue as `author`; its number.
    pub fn add_issue_by(
        &self,
        repo: &str,
        author: &str,
        title: &str,
        body: &str,
        labels: &[&str],
    ) -> u64 {
        let mut state = self.state();
        let number = state.number(repo);
        let at = now();
        state.issues.push(Issue {
            number,
            repo: repo.to_owned(),
            title: title.to_owned(),
            body: body.to_owned(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            state: "open".into(),
            author: author.to_owned(),
            created_at: at.clone(),
            updated_at: at,
        });
        number
    }

    /// Opens a pull request as `author` from branch `head` at `head_sha` (of the same repository) into `base`;
    /// its number. Change anything else with [`FakeGitHub::update_pull`].
    pub fn add_pull(
        &self,
        repo: &str,
        author: &str,
        head: &str,
        head_sha: &str,
        base: &str,
    ) -> u64 {
        let mut state = self.state();
        let number = state.number(repo);
        let at = now();
        state.pulls.push(Pull {
            number,
            repo: repo.to_owned(),
            title: format!("Pull request {number}"),
            head: head.to_owned(),
            base: base.to_owned(),
            body: String::new(),
            head_sha: head_sha.to_owned(),
            head_repo: repo.to_owned(),
            draft: false,
            state: "open".into(),
            merged: false,
            author: author.to_owned(),
            labels: vec![],
            created_at: at.clone(),
            updated_at: at,
        });
        number
    }

    /// Makes pull request `number` have this head (sha, branch, head repository), creating it when the fake
    /// does not know it yet (an `issue_comment` payload says only that the issue is a pull request).
    pub fn set_pull_head(&self, repo: &str, number: u64, sha: &str, branch: &str, head_repo: &str) {
        let mut state = self.state();
        if let Some(pull) = state
            .pulls
            .iter_mut()
            .find(|p| p.repo == repo && p.number == number)
        {
            pull.head_sha = sha.to_owned();
            pull.head = branch.to_owned();
            pull.head_repo = head_repo.to_owned();
            return;
        }
        let at = now();
        state.pulls.push(Pull {
            number,
            repo: repo.to_owned(),
            title: format!("Pull request {number}"),
            head: branch.to_owned(),
            base: "main".into(),
            body: String::new(),
            head_sha: sha.to_owned(),
            head_repo: head_repo.to_owned(),
            draft: false,
            state: "open".into(),
            merged: false,
            author: "octocat".into(),
            labels: vec![],
            created_at: at.clone(),
            updated_at: at,
        });
    }

    /// Changes a pull request as someone else would (push to its head, close it, make it a fork's...).
    pub fn update_pull(&self, repo: &str, number: u64, change: impl FnOnce(&mut Pull)) {
        let mut state = self.state();
        let pull = state
            .pulls
            .iter_mut()
            .find(|p| p.repo == repo && p.number == number)
            .unwrap_or_else(|| panic!("no pull request {repo}#{number}"));
        change(pull);
    }

    /// Changes an issue as someone else would.
    pub fn update_issue(&self, repo: &str, number: u64, change: impl FnOnce(&mut Issue)) {
        let mut state = self.state();
        let issue = state
            .issues
            .iter_mut()
            .find(|i| i.repo == repo && i.number == number)
            .unwrap_or_else(|| panic!("no issue {repo}#{number}"));
        change(issue);
    }

    /// Installs the App on `account` as installation `id`, with these repositories: from now on only
    /// installed repositories have an installation (apps/get-repo-installation), and the installations are
    /// listed (apps/list-installations, apps/list-repos-accessible-to-installation).
    pub fn install(&self, id: u64, account: &str, repos: &[&str]) {
        self.state().installations.insert(
            id,
            (
                account.to_owned(),
                repos.iter().map(|r| (*r).to_owned()).collect(),
            ),
        );
    }

    /// Takes a repository off an installation (what `installation_repositories` `removed` tells).
    pub fn uninstall_repo(&self, id: u64, repo: &str) {
        if let Some((_, repos)) = self.state().installations.get_mut(&id) {
            repos.retain(|r| !r.eq_ignore_ascii_case(repo));
        }
    }

    /// The clone URL repos/get answers for `repo` (a test's remote).
    pub fn set_clone_url(&self, repo: &str, url: &str) {
        self.state()
            .clone_urls
            .insert(repo.to_owned(), url.to_owned());
    }

    /// Where the App's webhook delivers (nightshift's `/webhooks/github`), signed with `secret`.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.state().webhook = Some((url.to_owned(), secret.to_owned()));
    }

    /// Logs a delivery of the App's webhook that nightshift answered `status_code` (0: nothing, it was down)
    /// without sending it: what GitHub's log shows after downtime. Returns its id.
    pub fn log_delivery(&self, event: &str, guid: &str, payload: &[u8], status_code: u16) -> u64 {
        let mut state = self.state();
        let id = state.id();
        let action = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v["action"].as_str().map(str::to_owned));
        state.hook_deliveries.push(HookDelivery {
            id,
            guid: guid.to_owned(),
            event: event.to_owned(),
            action,
            payload: payload.to_vec(),
            status_code,
            delivered_at: now(),
            redelivery: false,
        });
        id
    }

    /// Delivers the App's webhook to nightshift, signed, as GitHub would, and logs it with the answer.
    pub async fn deliver(&self, event: &str, guid: &str, payload: &[u8]) -> u16 {
        let (url, secret) = self.state().webhook.clone().expect("set_webhook first");
        let status = post_webhook(&url, &secret, event, guid, payload).await;
        self.log_delivery(event, guid, payload, status);
        status
    }

    /// Every attempt in the App's delivery log, oldest first (redeliveries with the status they met).
    pub fn hook_deliveries(&self) -> Vec<HookDelivery> {
        let state = self.state();
        let statuses = state.attempt_status.lock().unwrap().clone();
        state
            .hook_deliveries
            .iter()
            .map(|d| HookDelivery {
                status_code: statuses.get(&d.id).copied().unwrap_or(d.status_code),
                ..d.clone()
            })
            .collect()
    }

    /// The GUIDs nightshift asked to be delivered again, in the order it asked.
    pub fn redelivered(&self) -> Vec<String> {
        self.state()
            .hook_deliveries
            .iter()
            .filter(|d| d.redelivery)
            .map(|d| d.guid.clone())
            .collect()
    }

    /// Takes in what a webhook payload says exists on GitHub: its issue or pull request (head, base, state,
    /// author), added or brought up to date, and the installation's id.
    pub fn learn(&self, payload: &Value) {
        let Some(repo) = payload["repository"]["full_name"].as_str() else {
            return;
        };
        let mut state = self.state();
        if let Some(id) = payload["installation"]["id"].as_u64() {
            state.installation_id = Some(id);
        }
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let labels = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|l| l.iter().map(|l| str_of(&l["name"])).collect())
                .unwrap_or_default()
        };
        let at = now();
        let pull = &payload["pull_request"];
        let issue = &payload["issue"];
        // The comment an `issue_comment` event is about exists too (nightshift reacts to it).
        if let (Some(id), Some(number)) =
            (payload["comment"]["id"].as_u64(), issue["number"].as_u64())
            && !state.comments.iter().any(|c| c.id == id)
        {
            state.comments.push(Comment {
                id,
                repo: repo.to_owned(),
                number,
                body: str_of(&payload["comment"]["body"]),
                author: str_of(&payload["comment"]["user"]["login"]),
                created_at: at.clone(),
                updated_at: at.clone(),
                edits: Vec::new(),
            });
        }
        if let Some(number) = pull["number"].as_u64() {
            let learned = Pull {
                number,
                repo: repo.to_owned(),
                title: str_of(&pull["title"]),
                head: str_of(&pull["head"]["ref"]),
                base: str_of(&pull["base"]["ref"]),
                body: str_of(&pull["body"]),
                head_sha: str_of(&pull["head"]["sha"]),
                head_repo: pull["head"]["repo"]["full_name"]
                    .as_str()
                    .unwrap_or(repo)
                    .to_owned(),
                draft: pull["draft"] == true,
                state: pull["state"].as_str().unwrap_or("open").to_owned(),
                merged: pull["merged"] == true,
                author: str_of(&pull["user"]["login"]),
                labels: labels(&pull["labels"]),
                created_at: at.clone(),
                updated_at: at,
            };
            match state
                .pulls
                .iter_mut()
                .find(|p| p.repo == repo && p.number == number)
            {
                Some(known) => *known = learned,
                None => state.pulls.push(learned),
            }
        } else if let Some(number) = issue["number"].as_u64() {
            if issue.get("pull_request").is_some() {
                // A comment on a pull request: its issue side says little of the pull request itself.
                if !state
                    .pulls
                    .iter()
                    .any(|p| p.repo == repo && p.number == number)
                {
                    let sha = fake_sha(&format!("{repo}#{number}"));
                    state.pulls.push(Pull {
                        number,
                        repo: repo.to_owned(),
                        title: str_of(&issue["title"]),
                        head: format!("pr-{number}"),
                        base: "main".into(),
                        body: str_of(&issue["body"]),
                        head_sha: sha,
                        head_repo: repo.to_owned(),
                        draft: false,
                        state: issue["state"].as_str().unwrap_or("open").to_owned(),
                        merged: false,
                        author: str_of(&issue["user"]["login"]),
                        labels: labels(&issue["labels"]),
                        created_at: at.clone(),
                        updated_at: at,
                    });
                }
                return;
            }
            let learned = Issue {
                number,
                repo: repo.to_owned(),
                title: str_of(&issue["title"]),
                body: str_of(&issue["body"]),
                labels: labels(&issue["labels"]),
                state: issue["state"].as_str().unwrap_or("open").to_owned(),
                author: str_of(&issue["user"]["login"]),
                created_at: at.clone(),
                updated_at: at,
            };
            match state
                .issues
                .iter_mut()
                .find(|i| i.repo == repo && i.number == number)
            {
                Some(known) => *known = learned,
                None => state.issues.push(learned),
            }
        }
    }

    /// Waits until `pred` holds for the fake's state, or panics after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&FakeGitHub) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(self) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; calls seen: {:#?}",
                    self.calls()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl FakeState {
    fn token_is_live(&self, token: &str) -> bool {
        self.installation_tokens.iter().any(|t| t == token)
            && self
                .token_expiry
                .get(token)
                .is_none_or(|end| SystemTime::now() < *end)
    }
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "message": message, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string() })),
    )
        .into_response()
}

fn match_operation<'a>(
    ops: &'a [Operation],
    method: &Method,
    path: &str,
) -> Option<(&'a Operation, HashMap<String, String>)> {
    let parts: Vec<&str> = path.split('/').collect();
    ops.iter().find_map(|op| {
        // A git ref is the rest of the path (`heads/feature/x`).
        let rest = op.segments.last().is_some_and(|s| s == "{ref}")
            && op.segments[1] == "repos"
            && op.segments.contains(&"git".to_owned());
        if op.method != *method
            || (op.segments.len() != parts.len() && !(rest && parts.len() > op.segments.len()))
        {
            return None;
        }
        let mut params = HashMap::new();
        for (i, seg) in op.segments.iter().enumerate() {
            let part = if rest && i == op.segments.len() - 1 {
                parts[i..].join("/")
            } else {
                parts[i].to_owned()
            };
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if part.is_empty() {
                    return None;
                }
                params.insert(name.to_owned(), percent_decode(&part));
            } else if *seg != part {
                return None;
            }
        }
        Some((op, params))
    })
}

/// Decodes `%XX` escapes and `+` (a query's space).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query's parameters, decoded, in order.
pub(crate) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("token "))
        .map(str::to_owned)
}

/// The app id a JWT claims to be issued by (`iss`), if it is a well-formed JWT.
fn jwt_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_header, claims, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()?;
    let claims: Value = serde_json::from_slice(&claims).ok()?;
    match &claims["iss"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A query value as the JSON its schema expects: a number or boolean where it reads as one.
fn query_value(raw: &str) -> Vec<Value> {
    let mut candidates = vec![Value::String(raw.to_owned())];
    if let Ok(n) = raw.parse::<i64>() {
        candidates.push(json!(n));
    }
    if let Ok(b) = raw.parse::<bool>() {
        candidates.push(json!(b));
    }
    candidates
}

/// Why GitHub's schema refuses `instance`, if it does.
fn schema_refuses(index: boon::SchemaIndex, instance: &Value) -> Option<String> {
    SPEC.schemas
        .validate(instance, index)
        .err()
        .map(|e| format!("{e:#}"))
}

fn fault_response(fault: Fault) -> Response {
    match fault {
        Fault::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap();
            error(status, status.canonical_reason().unwrap_or("error"))
        }
        Fault::BadGatewayBefore | Fault::BadGatewayAfter => {
            error(StatusCode::BAD_GATEWAY, "Server Error")
        }
        Fault::SecondaryRateLimit { retry_after } => {
            let mut response = error(
                StatusCode::FORBIDDEN,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after));
            response
        }
        Fault::RateLimit { status, reset_in } => {
            let reset = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + reset_in;
            let mut response = error(
                StatusCode::from_u16(status).unwrap(),
                "API rate limit exceeded for installation ID 77. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
            );
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", HeaderValue::from(5000));
            headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
            headers.insert("x-ratelimit-used", HeaderValue::from(5000));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
            headers.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
            response
        }
        Fault::Outage => error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        Fault::DropAfter | Fault::HangAfter => unreachable!("answered without a response"),
    }
}

async fn serve(
    inner: Arc<Inner>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, Dropped> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(Body::new(body), 64 << 20)
        .await
        .map_err(|_| Dropped)?;
    if let Some(page) = manifest::page(&inner, &parts.method, &parts.uri, &body) {
        return Ok(page);
    }
    if let Some(page) = oauth::page(&inner, &parts.method, &parts.uri, &parts.headers, &body) {
        return Ok(page);
    }
    let call = format!("{} {}", parts.method, parts.uri);
    let write = parts.method != Method::GET && parts.method != Method::HEAD;
    let (response, outcome) = handle(
        &inner,
        &call,
        &parts.method,
        &parts.uri,
        &parts.headers,
        body,
    )
    .await;
    if let Some(outcome) = outcome {
        let status = match outcome.fault {
            Some(Fault::DropAfter | Fault::HangAfter) => None,
            _ => Some(response.status().as_u16()),
        };
        if write {
            inner.state.lock().unwrap().writes.push(Write {
                call: call.clone(),
                operation: outcome.operation,
                fault: outcome.fault,
                applied: outcome.applied,
                status,
            });
        }
        match outcome.fault {
            Some(Fault::DropAfter) => return Err(Dropped),
            Some(Fault::HangAfter) => {
                let hang = inner.state.lock().unwrap().hang;
                tokio::time::sleep(hang.unwrap_or(Duration::from_secs(120))).await;
                return Err(Dropped);
            }
            _ => {}
        }
    }
    Ok(response)
}

/// What became of a call that reached an operation.
struct Outcome {
    operation: String,
    fault: Option<Fault>,
    applied: bool,
}

async fn handle(
    inner: &Inner,
    call: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> (Response, Option<Outcome>) {
    inner.state.lock().unwrap().calls.push(call.to_owned());
    let unexpected = |why: String| {
        inner
            .state
            .lock()
            .unwrap()
            .unexpected
            .push(format!("{call}: {why}"));
    };
    let outage = inner.state.lock().unwrap().outage_until;
    if outage.is_some_and(|until| tokio::time::Instant::now() < until) {
        inner
            .state
            .lock()
            .unwrap()
            .injected
            .push((call.to_owned(), Fault::Outage));
        return (fault_response(Fault::Outage), None);
    }
    let Some((op, params)) = match_operation(&SPEC.operations, method, uri.path()) else {
        unexpected("not an operation of the fake's OpenAPI description".into());
        return (error(StatusCode::NOT_FOUND, "Not Found"), None);
    };
    let mut outcome = Outcome {
        operation: op.id.clone(),
        fault: None,
        applied: false,
    };

    // Credentials first, as GitHub: the App's JWT for the App's own endpoints, a valid token for the rest.
    let presented = bearer(headers);
    // A user's token (signed in with GitHub) is good for asking who they are, and nothing else.
    let user_token = presented
        .as_ref()
        .is_some_and(|t| inner.state.lock().unwrap().oauth.tokens.contains_key(t));
    let authorized = match (&inner.auth, op.id.as_str()) {
        _ if user_token => oauth::USER_TOKEN_OPERATIONS.contains(&op.id.as_str()),
        (
            ExpectedAuth::App { app_id },
            "apps/create-installation-access-token"
            | "apps/get-authenticated"
            | "apps/get-repo-installation"
            | "apps/list-installations"
            | "apps/list-webhook-deliveries"
            | "apps/redeliver-webhook-delivery",
        ) => presented.as_deref().and_then(jwt_issuer) == Some(app_id.to_string()),
        (ExpectedAuth::App { .. }, _) => presented
            .as_ref()
            .is_some_and(|t| inner.state.lock().unwrap().token_is_live(t)),
        (ExpectedAuth::Token(token), _) => presented.as_deref() == Some(token.as_str()),
        // Exchanging the code needs no credentials.
        (ExpectedAuth::Manifest, "apps/create-from-manifest") => true,
        (
            ExpectedAuth::Manifest,
            "apps/create-installation-access-token"
            | "apps/get-authenticated"
            | "apps/get-repo-installation"
            | "apps/list-installations"
            | "apps/list-webhook-deliveries"
            | "apps/redeliver-webhook-delivery",
        ) => {
            let app = inner.state.lock().unwrap().manifest_app.clone();
            match (app, presented.as_deref()) {
                (Some(app), Some(jwt)) => manifest::valid_app_jwt(jwt, &app),
                _ => false,
            }
        }
        (ExpectedAuth::Manifest, _) => presented
            .as_ref()
            .is_some_and(|t| inner.state.lock().unwrap().token_is_live(t)),
    };
    if !authorized {
        unexpected(format!("bad credentials ({presented:?})"));
        return (
            error(StatusCode::UNAUTHORIZED, "Bad credentials"),
            Some(outcome),
        );
    }
    // Check runs are written by GitHub Apps only: a personal token is refused before the body is read.
    if matches!(op.id.as_str(), "checks/create" | "checks/update")
        && matches!(inner.auth, ExpectedAuth::Token(_))
    {
        unexpected(format!(
            "{} with a personal token: only a GitHub App may write check runs",
            op.id
        ));
        let anchor = if op.id == "checks/create" {
            "create-a-check-run"
        } else {
            "update-a-check-run"
        };
        return (
            (
                StatusCode::FORBIDDEN,
                axum::Json(json!({
                    "message": "You must authenticate via a GitHub App.",
                    "documentation_url": format!("https://docs.github.com/rest/checks/runs#{anchor}"),
                    "status": "403",
                })),
            )
                .into_response(),
            Some(outcome),
        );
    }

    // The request as GitHub's description says it must be.
    for (name, value) in query_pairs(uri) {
        let Some(index) = op.query.get(&name) else {
            continue; // GitHub ignores parameters it does not know
        };
        let candidates = query_value(&value);
        if candidates
            .iter()
            .all(|c| schema_refuses(*index, c).is_some())
        {
            let why = schema_refuses(*index, &candidates[0]).unwrap_or_default();
            unexpected(format!("query `{name}={value}` refused: {why}"));
            return (
                error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("Invalid request.\n\n`{name}` {why}"),
                ),
                Some(outcome),
            );
        }
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                unexpected(format!("body is not JSON: {e}"));
                return (
                    error(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
                    Some(outcome),
                );
            }
        }
    };
    if let Some((index, required)) = op.body
        && (required || !body.is_null())
        && let Some(why) = schema_refuses(index, &body)
    {
        unexpected(format!("body refused by the schema: {why}\nbody: {body}"));
        return (
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Invalid request.\n\n{why}"),
            ),
            Some(outcome),
        );
    }

    let fault = {
        let mut state = inner.state.lock().unwrap();
        let queued = state.failures.get_mut(&op.id).and_then(Vec::pop);
        let minting = op.id == "apps/create-installation-access-token";
        let write = *method != Method::GET;
        queued.or_else(|| {
            let (p, kinds) = state.fault_rate.clone()?;
            if !write || minting {
                return None;
            }
            let draw = (state.next_random() >> 11) as f64 / (1u64 << 53) as f64;
            let pick = state.next_random() as usize % kinds.len();
            (draw < p).then(|| kinds[pick])
        })
    };
    if let Some(fault) = fault {
        inner
            .state
            .lock()
            .unwrap()
            .injected
            .push((call.to_owned(), fault));
        outcome.fault = Some(fault);
        if !fault.applies() {
            return (fault_response(fault), Some(outcome));
        }
    }

    let mut params = params;
    // The installation a token belongs to, for the operations that answer per installation.
    params.insert("token".into(), presented.clone().unwrap_or_default());
    let answer = ops::apply(inner, op.id.as_str(), &params, uri, &body);
    let (response, applied) = match answer {
        ops::Answer::Done(status, value, applied) => {
            ((status, axum::Json(value)).into_response(), applied)
        }
        ops::Answer::Page(response) => (response, false),
        ops::Answer::Refused(status, message, errors) => {
            inner.state.lock().unwrap().refusals.push(Refusal {
                call: call.to_owned(),
                status: status.as_u16(),
                message: format!("{message} {errors}"),
            });
            let mut v = json!({ "message": message, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string() });
            if !errors.is_null() {
                v["errors"] = errors;
            }
            ((status, axum::Json(v)).into_response(), false)
        }
        ops::Answer::Unexpected(status, why) => {
            unexpected(why.clone());
            (error(status, &why), false)
        }
    };
    outcome.applied = applied;
    match outcome.fault {
        Some(Fault::BadGatewayAfter) => (fault_response(Fault::BadGatewayAfter), Some(outcome)),
        _ => (response, Some(outcome)),
    }
}

impl Inner {
    /// The account nightshift posts as: the token's user, or the App's bot.
    fn own_login(&self) -> String {
        match self.auth {
            ExpectedAuth::Token(_) => TOKEN_LOGIN.to_owned(),
            ExpectedAuth::App { .. } | ExpectedAuth::Manifest => APP_LOGIN.to_owned(),
        }
    }
}

pub(crate) fn example(name: &str) -> Value {
    let mut v = SPEC.examples[name]["value"].clone();
    if let Value::Array(items) = v {
        v = items.into_iter().next().unwrap();
    }
    v
}

pub(crate) fn rewrite_urls(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) => *s = s.replace(from, to),
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_urls(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| rewrite_urls(v, from, to)),
        _ => {}
    }
}

/// POSTs a webhook delivery signed with `secret`, as GitHub does; the status nightshift answered (0: none).
pub(crate) async fn post_webhook(
    url: &str,
    secret: &str,
    event: &str,
    guid: &str,
    payload: &[u8],
) -> u16 {
    let sent = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", guid)
        .header("x-hub-signature-256", super::sign(secret, payload))
        .body(payload.to_vec())
        .send()
        .await;
    sent.map(|r| r.status().as_u16()).unwrap_or(0)
}
