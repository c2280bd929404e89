//! The test harness: a real `nightshift serve` process, a real bare git repository as the "remote", the
//! fake GitHub, signed deliveries of octokit's example payloads, and the real SQLite store to inspect.

#![allow(dead_code)]

pub mod fake_github;
pub mod gateway;
pub mod git_http;
pub mod model_server;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use nightshift::store::{JobRecord, JobState, SqliteStore, Store};
use serde_json::Value;
use sha2::Sha256;

pub use fake_github::{ExpectedAuth, FakeGitHub};

pub const SECRET: &str = "It's a Secret to Everybody";
pub const TOKEN: &str = "ghp_test_token";
pub const APP_ID: u64 = 4242;
pub const INSTALLATION: u64 = 77;

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(manifest_dir().join("tests/fixtures").join(path)).unwrap()
}

/// The folder holding the real `codex` and `claude` programs (tests/agent-clis, installed by scripts/test.sh).
pub fn agent_clis() -> PathBuf {
    let bin = manifest_dir().join("tests/agent-clis/node_modules/.bin");
    assert!(
        bin.join("codex").exists() && bin.join("claude").exists(),
        "the real agent CLIs are not installed: run scripts/test.sh, or `npm ci --prefix tests/agent-clis`"
    );
    bin
}

/// PATH with the agent CLIs first.
pub fn path_with_agent_clis() -> String {
    format!(
        "{}:{}",
        agent_clis().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Commits everything in the checkout `dir` as the test author.
pub fn commit_all(dir: &Path, message: &str) {
    git(dir, &["add", "."]);
    git(
        dir,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "--quiet",
            "-m",
            message,
        ],
    );
}

/// How the service authenticates to the fake GitHub.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Token,
    App,
    /// No GitHub credentials and no webhook secret: the App is set up in the browser (the manifest flow).
    Manifest,
}

/// Adds lines (indented by two spaces) to the service config's `ingest:` block.
pub fn ingest_config(spine: &Spine, lines: &str) {
    let text = std::fs::read_to_string(&spine.config).unwrap();
    let text = text.replacen("ingest:\n", &format!("ingest:\n{lines}"), 1);
    std::fs::write(&spine.config, text).unwrap();
}

/// Appends top-level YAML (e.g. `gateway:` or `budgets:`) to the service config.
pub fn append_config(spine: &Spine, yaml: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&spine.config)
        .unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
}

pub struct Spine {
    pub dir: tempfile::TempDir,
    pub github: FakeGitHub,
    /// The bare repository every payload's `clone_url` points at.
    pub remote: PathBuf,
    /// Where the `wait` agent records its starts and waits for `release`.
    pub gate: PathBuf,
    pub config: PathBuf,
    pub server: Option<Server>,
    store: Option<SqliteStore>,
}

pub struct Server {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends the service a signal (`libc::SIGTERM`, `libc::SIGINT`).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signalling {pid}");
    }

    /// Waits until the service has exited (within a minute), and says how it ended.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service did not exit:\n{}", self.log());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- nightshift log ----\n{}", self.log());
        }
    }
}

impl Spine {
    /// A fresh world: a remote with one commit on `main`, the given trigger files, and a config using `auth`.
    pub async fn new(auth: Auth, triggers: &[(&str, &str)]) -> Spine {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let remote = root.join("remote.git");
        git(
            root,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                remote.to_str().unwrap(),
            ],
        );
        let seed = root.join("seed");
        git(
            root,
            &[
                "clone",
                "--quiet",
                remote.to_str().unwrap(),
                seed.to_str().unwrap(),
            ],
        );
        std::fs::write(seed.join("README.md"), "# Hello-World\n").unwrap();
        commit_all(&seed, "first");
        git(&seed, &["push", "--quiet", "origin", "HEAD:main"]);

        let gate = root.join("gate");
        std::fs::create_dir_all(&gate).unwrap();
        let trigger_dir = root.join("triggers");
        std::fs::create_dir_all(&trigger_dir).unwrap();
        for (name, text) in triggers {
            std::fs::write(trigger_dir.join(name), text).unwrap();
        }

        let github = FakeGitHub::start(match auth {
            Auth::Token => ExpectedAuth::Token(TOKEN.into()),
            Auth::App => ExpectedAuth::App { app_id: APP_ID },
            Auth::Manifest => ExpectedAuth::Manifest,
        })
        .await;
        let credentials = match auth {
            Auth::Token => format!("  token: {TOKEN}\n"),
            Auth::App => format!(
                "  app_id: {APP_ID}\n  private_key: {}\n",
                manifest_dir()
                    .join("tests/fixtures/test-app-key.pem")
                    .display()
            ),
            Auth::Manifest => String::new(),
        };
        let webhook_secrets = match auth {
            Auth::Manifest => String::new(),
            _ => format!("  webhook_secrets: [\"rotated-away\", \"{SECRET}\"]\n"),
        };
        let agents = manifest_dir().join("tests/agents");
        // Tests send one example body under many delivery ids: replay protection is off here, and on in
        // tests/ingest.rs (see `ingest_config`).
        let config = root.join("nightshift.yml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:0\nstore: sqlite://{root}/state/nightshift.db\ndata_dir: {root}/data\n\
                 triggers: {root}/triggers\nworkers: 2\njob_lease: 2s\nretry:\n  backoff: 200ms\ngit:\n  file_roots: [{root}]\n  http_hosts: [127.0.0.1]\n\
                 github:\n  api_url: {api}\n  timeout: 5s\n  web_url: {api}\n{credentials}{webhook_secrets}\
                 agents:\n\
                 \x20 reply: {{command: [{agents}/reply.sh], timeout: 30s}}\n\
                 \x20 edit: {{command: [{agents}/edit.sh], timeout: 30s}}\n\
                 \x20 wait: {{command: [{agents}/wait.sh, {gate}], timeout: 90s, shared: {{writable: [{gate}]}}}}\n\
                 \x20 env: {{command: [{agents}/env.sh], timeout: 30s}}\n\
                 \x20 head: {{command: [{agents}/head.sh], timeout: 30s}}\n\
                 \x20 skills: {{command: [{agents}/skills.sh], timeout: 30s}}\n\
                 \x20 review: {{command: [{agents}/review.sh, good], timeout: 30s}}\n\
                 \x20 sandboxed: {{command: [{agents}/sandboxed.sh, {gate}], timeout: 30s, sandbox: bubblewrap}}\n\
                 \x20 badreview: {{command: [{agents}/review.sh, bad], timeout: 30s}}\n\
                 skills: {root}/skills\n\
                 ingest:\n  replay_window: 0s\n",
                root = root.display(),
                api = github.url,
                agents = agents.display(),
                gate = gate.display(),
            ),
        )
        .unwrap();
        Spine {
            dir,
            github,
            remote,
            gate,
            config,
            server: None,
            store: None,
        }
    }

    /// Commits `text` as `path` on top of `base` in the remote and pushes it as `branch`; returns the commit.
    pub fn commit(&self, base: &str, branch: &str, path: &str, text: &str) -> String {
        let seed = self.dir.path().join("seed");
        git(&seed, &["fetch", "--quiet", "origin"]);
        git(
            &seed,
            &[
                "checkout",
                "--quiet",
                "-B",
                branch,
                &format!("origin/{base}"),
            ],
        );
        let file = seed.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        commit_all(&seed, path);
        git(
            &seed,
            &["push", "--quiet", "origin", &format!("HEAD:{branch}")],
        );
        git(&seed, &["rev-parse", "HEAD"])
    }

    /// Adds agent profiles (YAML lines indented by two spaces, under `agents:`) to the service config.
    pub fn add_agents(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("agents:\n", &format!("agents:\n{lines}"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts `nightshift serve` and waits until it is ready.
    pub async fn start(&mut self) {
        self.start_with_env(&[]).await;
    }

    pub async fn start_with_env(&mut self, env: &[(&str, &str)]) {
        self.start_with(env, None).await;
    }

    /// Starts the service as [`Spine::start_with_env`] does, with `inherited` open in it as descriptor 9
    /// without close-on-exec, as a careless parent (a shell's `exec 9<file`) leaves one.
    pub async fn start_with(&mut self, env: &[(&str, &str)], inherited: Option<&std::fs::File>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nightshift"));
        if let Some(file) = inherited {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = file.as_raw_fd();
            // SAFETY: dup2 is async-signal-safe; the new descriptor has no close-on-exec flag.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 9) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["--config", self.config.to_str().unwrap(), "serve"])
            .env_remove("NIGHTSHIFT_WEBHOOK_SECRET")
            .env_remove("NIGHTSHIFT_GITHUB_TOKEN")
            .env("RUST_LOG", "info,nightshift=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Lines read as bytes: one that is not UTF-8 is shown lossily, never the end of the log.
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                // A text line (`... ready address=...`) or a JSON one (`log_format: json`).
                if line.contains(" ready ") || line.contains(r#""message":"ready""#) {
                    let addr = line
                        .split("address=")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .or_else(|| line.split(r#""address":""#).nth(1)?.split('"').next());
                    // Only the server's own line carries the address ("worktree ready at …" of a job
                    // claimed during start-up does not): the channel is kept until it comes.
                    if let Some(addr) = addr
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr.to_owned());
                    }
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap();
        let addr = match addr {
            Ok(addr) => addr,
            Err(_) => {
                // How it ended, when it did (a signal says more than a log that stops).
                let ended = child.try_wait();
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nightshift did not become ready ({ended:?}):\n{}",
                    log.lock().unwrap()
                );
            }
        };
        self.server = Some(Server {
            child,
            url: format!("http://{addr}"),
            log,
        });
    }

    /// Kills the service at once (SIGKILL): no shutdown, no cleanup.
    pub fn kill(&mut self) {
        self.server = None;
    }

    pub fn url(&self) -> String {
        self.server
            .as_ref()
            .expect("the server is running")
            .url
            .clone()
    }

    /// An octokit example payload, pointed at our bare remote (and, for App auth, at our installation).
    pub fn payload(&self, path: &str) -> Vec<u8> {
        let mut value: Value =
            serde_json::from_slice(&fixture(&format!("webhooks/{path}"))).unwrap();
        value["repository"]["clone_url"] = Value::String(self.remote.display().to_string());
        value["repository"]["default_branch"] = Value::String("main".into());
        value["installation"] = serde_json::json!({ "id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNzc=" });
        serde_json::to_vec(&value).unwrap()
    }

    /// Delivers the octokit example `path` (see [`Spine::payload`]) as event `event`, and checks it is accepted.
    pub async fn deliver_example(&self, event: &str, delivery: &str, path: &str) {
        let status = self.deliver(event, delivery, &self.payload(path)).await;
        assert_eq!(status, 202, "delivering {path}");
    }

    /// Job `job`'s log.
    pub async fn job_log(
        &mut self,
        job: nightshift::ids::JobId,
    ) -> Vec<nightshift::store::LogLine> {
        self.store().await.job_log(job).await.unwrap()
    }

    /// POSTs a delivery signed with the test secret.
    pub async fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> reqwest::StatusCode {
        // What the event says exists on GitHub (its issue or pull request) exists on the fake.
        if let Ok(payload) = serde_json::from_slice::<Value>(body) {
            self.github.learn(&payload);
        }
        self.post(
            body,
            &[
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &sign(SECRET, body)),
            ],
        )
        .await
    }

    pub async fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> reqwest::StatusCode {
        self.try_post(body, headers).await.unwrap()
    }

    /// [`Spine::post`], or the error of a request whose connection the server closed (a body refused
    /// unread: the client may still be writing it when the answer and the close come).
    pub async fn try_post(
        &self,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> reqwest::Result<reqwest::StatusCode> {
        nightshift::install_tls_provider();
        let mut request = reqwest::Client::new()
            .post(format!("{}/webhooks/github", self.url()))
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.map(|r| r.status())
    }

    pub async fn store(&mut self) -> &SqliteStore {
        if self.store.is_none() {
            let url = format!("sqlite://{}/state/nightshift.db", self.dir.path().display());
            self.store = Some(SqliteStore::connect(&url).await.unwrap());
        }
        self.store.as_ref().unwrap()
    }

    pub async fn jobs(&mut self) -> Vec<JobRecord> {
        self.store().await.jobs().await.unwrap()
    }

    /// Waits until there are `n` jobs and all have ended.
    pub async fn wait_for_finished_jobs(&mut self, n: usize) -> Vec<JobRecord> {
        for _ in 0..600 {
            let jobs = self.jobs().await;
            if jobs.len() == n
                && jobs.iter().all(|j| {
                    matches!(
                        j.state,
                        JobState::Succeeded | JobState::Failed | JobState::Cancelled
                    )
                })
            {
                return jobs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("jobs did not finish: {:#?}", self.jobs().await);
    }

    /// Waits until the fake GitHub has `n` comments (a failed job's note comes just after the job ends).
    pub async fn wait_for_comments(&self, n: usize) -> Vec<fake_github::Comment> {
        for _ in 0..300 {
            let comments = self.github.comments();
            if comments.len() >= n {
                return comments;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("expected {n} comments, have {:#?}", self.github.comments());
    }

    /// Waits until job `job`'s log has a line starting with `prefix`; returns the log.
    pub async fn wait_for_log_line(
        &mut self,
        job: nightshift::ids::JobId,
        prefix: &str,
    ) -> Vec<nightshift::store::LogLine> {
        for _ in 0..300 {
            let log = self.job_log(job).await;
            if log.iter().any(|l| l.line.starts_with(prefix)) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {job}'s log never said `{prefix}`");
    }

    /// Fails the test if nightshift made a call the fake GitHub does not know or did not expect.
    pub fn assert_no_unexpected_calls(&self) {
        let unexpected = self.github.unexpected();
        assert!(
            unexpected.is_empty(),
            "unexpected GitHub calls: {unexpected:#?}"
        );
    }
}

/// The processes of the `wait` agent (and its box) still running: every one names the gate folder.
pub fn agent_processes(gate: &Path) -> usize {
    let gate = gate.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            entry.file_name().to_str()?.parse::<u32>().ok()?;
            std::fs::read(entry.path().join("cmdline")).ok()
        })
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(gate))
        .count()
}

/// The store `serve` uses in a test: the spine's SQLite, or a Postgres the test started (kept running while
/// this lives).
pub struct Db {
    _server: Option<postgres::PgServer>,
    pub store: std::sync::Arc<dyn nightshift::store::Store>,
    /// The store's URL.
    pub url: String,
}

impl Spine {
    /// Points the spine's config at a Postgres started here (or keeps its SQLite); the store to look at.
    pub async fn use_store(&self, postgres: bool) -> Db {
        let (server, url) = if postgres {
            let server = postgres::PgServer::start();
            let url = server.url();
            (Some(server), url)
        } else {
            let url = format!("sqlite://{}/state/nightshift.db", self.dir.path().display());
            (None, url)
        };
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("store:") {
                    format!("store: \"{url}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&self.config, text + "\n").unwrap();
        let store = nightshift::store::open(&url).await.unwrap();
        Db {
            _server: server,
            store,
            url,
        }
    }
}

/// Writes an executable agent script into the world's own folder (a hidden place: the box binds the
/// program's folder back read-only) and adds it as profile `name` with `extra` YAML keys.
pub fn attacker(spine: &Spine, name: &str, script: &str, extra: &str) -> PathBuf {
    let dir = spine.dir.path().join("attackers");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(&path, format!("#!/bin/bash\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let timeout = if extra.contains("timeout") {
        ""
    } else {
        ", timeout: 30s"
    };
    spine.add_agents(&format!(
        "  {name}: {{command: [{}, {}]{timeout}{extra}}}\n",
        path.display(),
        spine.dir.path().display()
    ));
    path
}

/// Whether the service still answers its liveness probe.
pub async fn healthy(spine: &Spine) {
    let body = reqwest::get(format!("{}/healthz", spine.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");
}
