//! A stateful fake of the GitHub REST API, built from GitHub's own OpenAPI description and response examples
//! (tests/fixtures/openapi). It knows only the operations in that description; a request for anything else,
//! a request body missing a field the schema requires, or a request without valid credentials is recorded as
//! unexpected, and tests assert there were none.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

const OPERATIONS: &str = include_str!("../fixtures/openapi/operations.json");
const EXAMPLES: &str = include_str!("../fixtures/openapi/response_examples.json");
/// Operations nightshift calls that the shared trim left out, extracted from the same OpenAPI description
/// by tests/fixtures/openapi/extract_extra.py.
const EXTRA: &str = include_str!("../fixtures/openapi/extra_operations.json");

#[derive(Clone, Debug)]
pub struct Comment {
    pub id: u64,
    pub repo: String,
    pub number: u64,
    pub body: String,
    /// Who posted it: nightshift's own account ([`TOKEN_LOGIN`], or the App's bot) or someone else.
    pub author: String,
}

#[derive(Clone, Debug)]
pub struct Pull {
    pub number: u64,
    pub repo: String,
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: String,
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
    App { app_id: u64 },
}

/// Something created with a POST the fake keeps as it came: a review, an issue, a check run.
#[derive(Clone, Debug)]
pub struct Created {
    pub operation: String,
    pub repo: String,
    pub body: Value,
}

#[derive(Default)]
struct FakeState {
    comments: Vec<Comment>,
    pulls: Vec<Pull>,
    created: Vec<Created>,
    /// Files of each pull request (repo, number), for pulls/list-files.
    pull_files: HashMap<(String, u64), Vec<String>>,
    installation_tokens: Vec<String>,
    /// When each installation token stops working.
    token_expiry: HashMap<String, SystemTime>,
    /// How long a minted installation token lives (GitHub: one hour).
    token_life: Option<Duration>,
    /// Each mint: the token and the body it was asked with (Null for an installation-wide token).
    mints: Vec<Mint>,
    unexpected: Vec<String>,
    calls: Vec<String>,
    next_id: u64,
    /// Operation id → statuses to answer with, one per call, before behaving normally again.
    failures: HashMap<String, Vec<u16>>,
    /// Permissions of users on repositories, (repo, lower-case login) → `admin`/`write`/`read`/`none`;
    /// anyone not listed has `read` (as on a public repository), but the owner of the repository `admin`.
    permissions: HashMap<(String, String), String>,
    /// Pull requests pulls/get answers for, (repo, number) → (head sha, head branch, head repository).
    pull_heads: HashMap<(String, u64), (String, String, String)>,
}

/// The login GET /user answers with (token mode).
pub const TOKEN_LOGIN: &str = "nightshift-user";

struct Operation {
    id: String,
    method: Method,
    segments: Vec<String>,
    required: Vec<String>,
}

struct Inner {
    state: Mutex<FakeState>,
    operations: Vec<Operation>,
    examples: Value,
    auth: ExpectedAuth,
}

#[derive(Clone)]
pub struct FakeGitHub {
    inner: Arc<Inner>,
    pub url: String,
}

impl FakeGitHub {
    pub async fn start(auth: ExpectedAuth) -> FakeGitHub {
        let spec: Value = serde_json::from_str(OPERATIONS).unwrap();
        let extra: Value = serde_json::from_str(EXTRA).unwrap();
        let operations = spec["operations"]
            .as_object()
            .unwrap()
            .iter()
            .chain(extra["operations"].as_object().unwrap().iter())
            .map(|(id, op)| Operation {
                id: id.clone(),
                method: op["method"].as_str().unwrap().parse().unwrap(),
                segments: op["path"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .map(str::to_owned)
                    .collect(),
                required: op["requestBody"]["content"]["application/json"]["schema"]["required"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        let mut examples: Value = serde_json::from_str(EXAMPLES).unwrap();
        for (name, example) in extra["examples"].as_object().unwrap() {
            examples["examples"][name] = example.clone();
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(FakeState {
                next_id: 100,
                ..Default::default()
            }),
            operations,
            examples: examples["examples"].clone(),
            auth,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeGitHub {
            inner,
            url: format!("http://{addr}"),
        }
    }

    pub fn comments(&self) -> Vec<Comment> {
        self.inner.state.lock().unwrap().comments.clone()
    }

    pub fn pulls(&self) -> Vec<Pull> {
        self.inner.state.lock().unwrap().pulls.clone()
    }

    /// Reviews, issues and check runs created, as (operation id, repo, request body).
    pub fn created(&self) -> Vec<Created> {
        self.inner.state.lock().unwrap().created.clone()
    }

    /// Sets the files a pull request changes.
    pub fn set_pull_files(&self, repo: &str, number: u64, files: &[&str]) {
        let files = files.iter().map(|f| f.to_string()).collect();
        self.inner
            .state
            .lock()
            .unwrap()
            .pull_files
            .insert((repo.to_owned(), number), files);
    }

    /// Makes pulls/get answer for pull request `number` with this head (a fork when `head_repo` is not
    /// `repo`); pull requests not set are not found.
    pub fn set_pull_head(&self, repo: &str, number: u64, sha: &str, branch: &str, head_repo: &str) {
        self.inner.state.lock().unwrap().pull_heads.insert(
            (repo.to_owned(), number),
            (sha.to_owned(), branch.to_owned(), head_repo.to_owned()),
        );
    }

    pub fn unexpected(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().unexpected.clone()
    }

    pub fn calls(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().calls.clone()
    }

    pub fn installation_tokens(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().installation_tokens.clone()
    }

    /// Every installation token minted, with what it was asked for.
    pub fn mints(&self) -> Vec<Mint> {
        self.inner.state.lock().unwrap().mints.clone()
    }

    /// Tokens minted from now on live `life` (and are refused after it), instead of an hour.
    pub fn set_token_life(&self, life: Duration) {
        self.inner.state.lock().unwrap().token_life = Some(life);
    }

    /// Whether `token` is an installation token this fake minted that has not expired yet.
    pub fn token_is_live(&self, token: &str) -> bool {
        let state = self.inner.state.lock().unwrap();
        state.installation_tokens.iter().any(|t| t == token)
            && state
                .token_expiry
                .get(token)
                .is_none_or(|end| SystemTime::now() < *end)
    }

    /// Sets a user's permission on a repository (`admin`, `write`, `read`, `none`).
    pub fn set_permission(&self, repo: &str, login: &str, permission: &str) {
        self.inner.state.lock().unwrap().permissions.insert(
            (repo.to_owned(), login.to_lowercase()),
            permission.to_owned(),
        );
    }

    /// Makes the next calls of `operation` (an OpenAPI operation id) fail with these statuses, in order.
    pub fn fail_next(&self, operation: &str, statuses: &[u16]) {
        let mut state = self.inner.state.lock().unwrap();
        state.failures.insert(
            operation.to_owned(),
            statuses.iter().rev().copied().collect(),
        );
    }

    /// Adds a comment as if nightshift's own account had posted it (for tests of what nightshift finds).
    pub fn add_comment(&self, repo: &str, number: u64, body: &str) {
        let own = self.inner.own_login();
        self.add_comment_by(repo, number, &own, body);
    }

    /// Adds a comment as if `author` had posted it.
    pub fn add_comment_by(&self, repo: &str, number: u64, author: &str, body: &str) {
        let mut state = self.inner.state.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        state.comments.push(Comment {
            id,
            repo: repo.to_owned(),
            number,
            body: body.to_owned(),
            author: author.to_owned(),
        });
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

fn error(status: StatusCode, message: &str) -> Response {
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
        if op.method != *method || op.segments.len() != parts.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (seg, part) in op.segments.iter().zip(&parts) {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.insert(name.to_owned(), (*part).to_owned());
            } else if seg != part {
                return None;
            }
        }
        Some((op, params))
    })
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

fn rewrite_urls(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) => *s = s.replace(from, to),
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_urls(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| rewrite_urls(v, from, to)),
        _ => {}
    }
}

impl Inner {
    fn example(&self, name: &str) -> Value {
        self.examples[name]["value"].clone()
    }

    fn comment_json(&self, c: &Comment) -> Value {
        let mut v = self.example("issue-comment");
        rewrite_urls(&mut v, "octocat/Hello-World", &c.repo);
        v["id"] = json!(c.id);
        v["body"] = json!(c.body);
        v["html_url"] = json!(format!(
            "https://github.com/{}/issues/{}#issuecomment-{}",
            c.repo, c.number, c.id
        ));
        v["issue_url"] = json!(format!(
            "https://api.github.com/repos/{}/issues/{}",
            c.repo, c.number
        ));
        v["user"]["login"] = json!(c.author);
        v["user"]["type"] = json!(if c.author.ends_with("[bot]") {
            "Bot"
        } else {
            "User"
        });
        v
    }

    /// The account nightshift posts as: the token's user, or the App's bot.
    fn own_login(&self) -> String {
        match self.auth {
            ExpectedAuth::Token(_) => TOKEN_LOGIN.to_owned(),
            ExpectedAuth::App { .. } => "nightshift-test[bot]".to_owned(),
        }
    }

    fn pull_json(&self, p: &Pull, example: &str) -> Value {
        let mut v = self.example(example);
        if let Value::Array(items) = v {
            v = items.into_iter().next().unwrap();
        }
        rewrite_urls(&mut v, "octocat/Hello-World", &p.repo);
        rewrite_urls(&mut v, "/1347", &format!("/{}", p.number));
        v["number"] = json!(p.number);
        v["title"] = json!(p.title);
        v["body"] = json!(p.body);
        v["state"] = json!("open");
        v["locked"] = json!(false);
        v["head"]["ref"] = json!(p.head);
        v["head"]["label"] = json!(format!("{}:{}", p.repo.split('/').next().unwrap(), p.head));
        v["base"]["ref"] = json!(p.base);
        v
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let call = format!("{method} {}", uri);
    inner.state.lock().unwrap().calls.push(call.clone());
    let unexpected = |why: String| {
        inner
            .state
            .lock()
            .unwrap()
            .unexpected
            .push(format!("{call}: {why}"));
    };
    let Some((op, params)) = match_operation(&inner.operations, &method, &path) else {
        unexpected("not an operation of the fake's OpenAPI description".into());
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    for field in &op.required {
        if body.get(field).is_none() {
            unexpected(format!("body lacks required field `{field}`"));
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("`{field}` is required"),
            );
        }
    }

    // Credentials: the App's JWT for minting installation tokens, a valid token for everything else.
    let presented = bearer(&headers);
    let authorized = match (&inner.auth, op.id.as_str()) {
        (
            ExpectedAuth::App { app_id },
            "apps/create-installation-access-token" | "apps/get-authenticated",
        ) => presented.as_deref().and_then(jwt_issuer) == Some(app_id.to_string()),
        (ExpectedAuth::App { .. }, _) => presented.as_ref().is_some_and(|t| {
            let state = inner.state.lock().unwrap();
            // A token works until it expires, as on GitHub.
            state.installation_tokens.contains(t)
                && state
                    .token_expiry
                    .get(t)
                    .is_none_or(|end| SystemTime::now() < *end)
        }),
        (ExpectedAuth::Token(token), _) => presented.as_deref() == Some(token.as_str()),
    };
    if !authorized {
        unexpected(format!("bad credentials ({presented:?})"));
        return error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }

    let injected = inner
        .state
        .lock()
        .unwrap()
        .failures
        .get_mut(&op.id)
        .and_then(Vec::pop);
    if let Some(status) = injected {
        let status = StatusCode::from_u16(status).unwrap();
        return error(status, status.canonical_reason().unwrap_or("error"));
    }

    let repo = || format!("{}/{}", params["owner"], params["repo"]);
    match op.id.as_str() {
        "apps/create-installation-access-token" => {
            let mut state = inner.state.lock().unwrap();
            let token = format!(
                "ghs_fake{}_{}",
                params["installation_id"],
                state.installation_tokens.len()
            );
            // A scoped token (what nightshift mints per job): exactly one repository by name, and only
            // permissions GitHub knows, at a level it knows.
            if body.as_object().is_some_and(|o| !o.is_empty()) {
                let repos = body["repositories"].as_array();
                if repos.is_none_or(|r| r.len() != 1 || !r[0].is_string()) {
                    drop(state);
                    unexpected(format!("a token must be for one repository: {body}"));
                    return error(StatusCode::UNPROCESSABLE_ENTITY, "bad repositories");
                }
                let known = ["metadata", "contents", "issues", "pull_requests", "checks"];
                let permissions = body["permissions"].as_object();
                let fine = permissions.is_some_and(|p| {
                    !p.is_empty()
                        && p.iter().all(|(k, v)| {
                            known.contains(&k.as_str())
                                && matches!(v.as_str(), Some("read" | "write"))
                        })
                });
                if !fine {
                    drop(state);
                    unexpected(format!("bad permissions for a token: {body}"));
                    return error(StatusCode::UNPROCESSABLE_ENTITY, "bad permissions");
                }
                if body.as_object().is_some_and(|o| o.len() != 2) {
                    drop(state);
                    unexpected(format!("unknown fields for a token: {body}"));
                    return error(StatusCode::UNPROCESSABLE_ENTITY, "unknown fields");
                }
            }
            state.installation_tokens.push(token.clone());
            let life = state.token_life.unwrap_or(Duration::from_secs(3600));
            let now = SystemTime::now();
            state.token_expiry.insert(token.clone(), now + life);
            state.mints.push(Mint {
                token: token.clone(),
                body: body.clone(),
                at: now,
            });
            let mut v = inner.example("installation-token");
            v["token"] = json!(token);
            v["expires_at"] = json!(humantime::format_rfc3339_millis(now + life).to_string());
            (StatusCode::CREATED, axum::Json(v)).into_response()
        }
        "issues/create-comment" => {
            let Some(text) = body["body"].as_str() else {
                unexpected("comment body is not a string".into());
                return error(StatusCode::UNPROCESSABLE_ENTITY, "body must be a string");
            };
            let comment = {
                let mut state = inner.state.lock().unwrap();
                state.next_id += 1;
                let comment = Comment {
                    id: state.next_id,
                    repo: repo(),
                    number: params["issue_number"].parse().unwrap(),
                    body: text.to_owned(),
                    author: inner.own_login(),
                };
                state.comments.push(comment.clone());
                comment
            };
            (
                StatusCode::CREATED,
                axum::Json(inner.comment_json(&comment)),
            )
                .into_response()
        }
        "issues/list-comments" => {
            let number: u64 = params["issue_number"].parse().unwrap();
            let comments: Vec<Value> = inner
                .state
                .lock()
                .unwrap()
                .comments
                .iter()
                .filter(|c| c.repo == repo() && c.number == number)
                .map(|c| inner.comment_json(c))
                .collect();
            axum::Json(Value::Array(comments)).into_response()
        }
        "pulls/list" => {
            let query: HashMap<String, String> = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/")))
                .collect();
            let pulls: Vec<Value> = inner
                .state
                .lock()
                .unwrap()
                .pulls
                .iter()
                .filter(|p| p.repo == repo())
                .filter(|p| {
                    query
                        .get("head")
                        .is_none_or(|h| *h == format!("{}:{}", params["owner"], p.head))
                })
                .map(|p| inner.pull_json(p, "pull-request-simple-items"))
                .collect();
            axum::Json(Value::Array(pulls)).into_response()
        }
        "pulls/create" => {
            let pull = {
                let mut state = inner.state.lock().unwrap();
                let number = 1000 + state.pulls.len() as u64 + 1;
                let pull = Pull {
                    number,
                    repo: repo(),
                    title: body["title"].as_str().unwrap_or_default().to_owned(),
                    head: body["head"].as_str().unwrap_or_default().to_owned(),
                    base: body["base"].as_str().unwrap_or_default().to_owned(),
                    body: body["body"].as_str().unwrap_or_default().to_owned(),
                };
                state.pulls.push(pull.clone());
                pull
            };
            (
                StatusCode::CREATED,
                axum::Json(inner.pull_json(&pull, "pull-request")),
            )
                .into_response()
        }
        "apps/get-authenticated" => {
            let mut v = inner.example("integration");
            v["slug"] = json!("nightshift-test");
            v["name"] = json!("nightshift test");
            axum::Json(v).into_response()
        }
        "pulls/create-review" | "issues/create" | "checks/create" => {
            let (example, status) = match op.id.as_str() {
                "pulls/create-review" => ("pull-request-review", StatusCode::OK),
                "issues/create" => ("issue", StatusCode::CREATED),
                _ => ("check-run", StatusCode::CREATED),
            };
            let mut v = inner.example(example);
            rewrite_urls(&mut v, "octocat/Hello-World", &repo());
            let n = {
                let mut state = inner.state.lock().unwrap();
                state.created.push(Created {
                    operation: op.id.clone(),
                    repo: repo(),
                    body: body.clone(),
                });
                state.next_id += 1;
                state.next_id
            };
            v["id"] = json!(n);
            if op.id == "issues/create" {
                v["number"] = json!(n);
                v["title"] = body["title"].clone();
                v["html_url"] = json!(format!("https://github.com/{}/issues/{n}", repo()));
            }
            (status, axum::Json(v)).into_response()
        }
        "users/get-authenticated" => {
            let mut v =
                inner.example("private-user-response-with-public-and-private-profile-information");
            v["login"] = json!(TOKEN_LOGIN);
            axum::Json(v).into_response()
        }
        "repos/get-collaborator-permission-level" => {
            let login = params["username"].to_lowercase();
            let permission = inner
                .state
                .lock()
                .unwrap()
                .permissions
                .get(&(repo(), login.clone()))
                .cloned()
                .unwrap_or_else(|| {
                    // A personal repository's owner administers it.
                    if params["owner"].eq_ignore_ascii_case(&login) {
                        "admin".to_owned()
                    } else {
                        "read".to_owned()
                    }
                });
            let mut v = inner.example(
                "repository-collaborator-permission-response-if-user-has-admin-permissions",
            );
            v["permission"] = json!(permission);
            v["role_name"] = json!(permission);
            v["user"]["login"] = json!(params["username"]);
            axum::Json(v).into_response()
        }
        "pulls/list-files" => {
            let number: u64 = params["pull_number"].parse().unwrap();
            let page: usize = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("page="))
                .and_then(|p| p.parse().ok())
                .unwrap_or(1);
            let files = inner
                .state
                .lock()
                .unwrap()
                .pull_files
                .get(&(repo(), number))
                .cloned()
                .unwrap_or_default();
            let template = inner.example("diff-entry-items")[0].clone();
            let entries: Vec<Value> = files
                .iter()
                .skip((page - 1) * 100)
                .take(100)
                .map(|f| {
                    let mut entry = template.clone();
                    entry["filename"] = json!(f);
                    entry
                })
                .collect();
            axum::Json(Value::Array(entries)).into_response()
        }
        "pulls/get" => {
            let number: u64 = params["pull_number"].parse().unwrap_or(0);
            let head = inner
                .state
                .lock()
                .unwrap()
                .pull_heads
                .get(&(repo(), number))
                .cloned();
            let Some((sha, branch, head_repo)) = head else {
                return error(StatusCode::NOT_FOUND, "Not Found");
            };
            let mut v = inner.example("pull-request");
            rewrite_urls(&mut v, "octocat/Hello-World", &repo());
            v["number"] = json!(number);
            v["state"] = json!("open");
            v["head"]["sha"] = json!(sha);
            v["head"]["ref"] = json!(branch);
            v["base"]["ref"] = json!("main");
            v["base"]["repo"]["full_name"] = json!(repo());
            v["base"]["repo"]["id"] = json!(1);
            v["head"]["repo"]["full_name"] = json!(head_repo);
            v["head"]["repo"]["id"] = json!(if head_repo == repo() { 1 } else { 2 });
            axum::Json(v).into_response()
        }
        "reactions/create-for-issue-comment" => {
            inner.state.lock().unwrap().created.push(Created {
                operation: op.id.clone(),
                repo: repo(),
                body: json!({ "comment_id": params["comment_id"], "content": body["content"] }),
            });
            (
                StatusCode::CREATED,
                axum::Json(json!({ "id": 1, "content": body["content"] })),
            )
                .into_response()
        }
        other => {
            unexpected(format!(
                "operation {other} is described but the fake does not implement it"
            ));
            error(StatusCode::NOT_IMPLEMENTED, "not implemented by the fake")
        }
    }
}
