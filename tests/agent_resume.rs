//! A follow-up round continues the agent's session: the real Codex CLI (`codex exec resume`) and Claude
//! Code (`claude -p --resume`), at the versions tests/agent-clis pins, run twice in one job's worktree and
//! home against a scripted model server on loopback. The second round's request must carry the first
//! round's conversation and the follow-up prompt, and both rounds must report the same session.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::model_server::{ModelServer, Recorded, Step};
use common::{agent_clis, git, path_with_agent_clis};
use nightshift::agent::{self, AgentJob, AgentOutcome, log::JobLog};
use nightshift::config::{AgentProfile, Backend, CliOptions, PromptVia, SandboxKind};
use nightshift::gateway::ModelAccess;
use serde_json::json;

const FIRST_PROMPT: &str = "Add FIRST.md, then say you are done.";
const FOLLOW_UP: &str = "The verify step `tests` failed (exit status 1):\n```\nassertion failed: capybara\n```\nFix it.";

/// One job's folders: a git worktree, and the home, temporary and output folders that persist between its
/// rounds.
struct JobDirs {
    _dir: tempfile::TempDir,
    worktree: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    output: PathBuf,
}

fn job_dirs() -> JobDirs {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let [worktree, home, tmp, output] =
        ["worktree", "home", "tmp", "output"].map(|name| root.join(name));
    for d in [&worktree, &home, &tmp, &output] {
        std::fs::create_dir_all(d).unwrap();
    }
    git(&worktree, &["init", "-q", "-b", "main"]);
    std::fs::write(worktree.join("README.md"), "# Capybara\n").unwrap();
    git(&worktree, &["add", "."]);
    git(
        &worktree,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "init",
        ],
    );
    JobDirs {
        _dir: dir,
        worktree,
        home,
        tmp,
        output,
    }
}

fn profile(backend: Backend) -> AgentProfile {
    AgentProfile {
        backend,
        timeout: Duration::from_secs(120),
        env: Vec::new(),
        max_output: 1 << 20,
        // Without nightshift's box: the model server is on the host's loopback (Codex keeps its own sandbox).
        sandbox: SandboxKind::None,
        limits: Default::default(),
        egress: Vec::new(),
        shared: Default::default(),
        max_turns: None,
        max_tokens: None,
        max_cost_usd: None,
        prompt_via: PromptVia::Stdin,
        repo_triggers: false,
    }
}

fn cli_options(program: &str, model: &str) -> CliOptions {
    CliOptions {
        program: agent_clis().join(program).display().to_string(),
        model: Some(model.into()),
        base_url: None,
        api_key_env: "UNUSED".into(),
        permission_mode: "acceptEdits".into(),
        bearer: false,
        allowed_tools: Vec::new(),
        args: Vec::new(),
    }
}

/// Runs one round of the job's agent, straight at `model` (no gateway: the agent is not boxed).
async fn round(
    profile: &AgentProfile,
    dirs: &JobDirs,
    model: &ModelServer,
    prompt: &str,
    resume: Option<String>,
) -> AgentOutcome {
    let path = path_with_agent_clis();
    let env = move |name: &str| (name == "PATH").then(|| path.clone());
    let (log, _rx) = JobLog::new(nightshift::config::DEFAULT_MAX_JOB_LOG);
    agent::run(AgentJob {
        profile_name: "fixer",
        profile,
        worktree: &dirs.worktree,
        prompt,
        home: &dirs.home,
        output_dir: &dirs.output,
        vars: vec![
            ("HOME".into(), dirs.home.display().to_string()),
            ("TMPDIR".into(), dirs.tmp.display().to_string()),
        ],
        sandbox: None,
        timeout: profile.timeout,
        max_turns: None,
        max_output: profile.max_output,
        env: &env,
        log,
        model: Some(ModelAccess {
            url: model.url.clone(),
            token: "job-token".into(),
            socket: PathBuf::new(),
            in_box_port: None,
        }),
        resume,
        history: &[],
    })
    .await
    .unwrap()
}

fn body(request: &Recorded) -> String {
    request.body.to_string()
}

/// How many times `needle` occurs in the request's JSON (its strings are JSON-escaped there).
fn occurrences(request: &Recorded, needle: &str) -> usize {
    let escaped = serde_json::to_string(needle).unwrap();
    body(request).matches(escaped.trim_matches('"')).count()
}

fn assert_resumed(first: &AgentOutcome, second: &AgentOutcome) -> String {
    assert!(first.failure.is_none(), "round 1: {first:?}");
    assert!(second.failure.is_none(), "round 2: {second:?}");
    let session = first.session.clone().expect("round 1 reports its session");
    nightshift::agent::cli::check_session_id(&session).unwrap();
    assert_eq!(
        second.session.as_deref(),
        Some(session.as_str()),
        "round 2 continues the same session"
    );
    session
}

#[tokio::test]
async fn a_codex_follow_up_round_resumes_the_same_session() {
    let model = ModelServer::agent(vec![
        Step::Patch("*** Begin Patch\n*** Add File: FIRST.md\n+capybara\n*** End Patch\n".into()),
        Step::Text("Round one: added FIRST.md.".into()),
    ])
    .await;
    let profile = profile(Backend::Codex(cli_options("codex", "gpt-5.5")));
    let dirs = job_dirs();

    let first = round(&profile, &dirs, &model, FIRST_PROMPT, None).await;
    assert_eq!(first.message, "Round one: added FIRST.md.");
    assert_eq!(model.requests().len(), 2, "a patch turn and an answer");
    // Kept in the job's home, where the next round looks.
    let sessions = dirs.home.join(".codex/sessions");
    assert!(sessions.is_dir(), "Codex kept its session in CODEX_HOME");

    let second = round(&profile, &dirs, &model, FOLLOW_UP, first.session.clone()).await;
    let session = assert_resumed(&first, &second);
    let requests = model.requests();
    assert_eq!(requests.len(), 3, "round 2 made one request");
    let resumed = &requests[2];
    // The first round's conversation: its prompt, the patch call and its output, and the answer.
    assert_eq!(occurrences(resumed, FIRST_PROMPT), 1, "{}", body(resumed));
    assert!(body(resumed).contains("*** Add File: FIRST.md"));
    assert!(body(resumed).contains("custom_tool_call_output"));
    assert!(body(resumed).contains("Round one: added FIRST.md."));
    // Then the follow-up, once, after all of it.
    assert_eq!(occurrences(resumed, FOLLOW_UP), 1, "{}", body(resumed));
    let input = resumed.body["input"].as_array().unwrap();
    let last = input.last().unwrap().to_string();
    assert!(last.contains("assertion failed: capybara"), "{last}");
    // Codex names its session in a header: the same in both rounds, and round 2 says it resumed it.
    assert_eq!(requests[0].header("session-id"), Some(session.as_str()));
    assert_eq!(resumed.header("session-id"), Some(session.as_str()));
    assert!(
        resumed
            .header("x-codex-turn-metadata")
            .is_some_and(|m| m.contains("\"history_initialization\":\"cold_resume\"")),
        "{:?}",
        resumed.headers
    );
    // The follow-up ran in the same worktree: the first round's file is still there.
    assert_eq!(
        std::fs::read_to_string(dirs.worktree.join("FIRST.md")).unwrap(),
        "capybara\n"
    );
}

#[tokio::test]
async fn a_claude_follow_up_round_resumes_the_same_session() {
    let model = ModelServer::agent(vec![
        Step::Tool {
            name: "Glob".into(),
            input: json!({"pattern": "*.md"}),
        },
        Step::Text("Round one: read the README.".into()),
        Step::Text("Round two: fixed the capybara.".into()),
    ])
    .await;
    let profile = profile(Backend::Claude(cli_options("claude", "claude-sonnet-4-5")));
    let dirs = job_dirs();
    let messages = |model: &ModelServer| -> Vec<Recorded> {
        model
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/messages")
            .collect()
    };

    let first = round(&profile, &dirs, &model, FIRST_PROMPT, None).await;
    assert_eq!(first.message, "Round one: read the README.");
    let before = messages(&model).len();
    assert!(before >= 2, "a tool turn and an answer");
    assert!(
        dirs.home.join(".claude/projects").is_dir(),
        "Claude Code kept its session in the job's home"
    );

    let second = round(&profile, &dirs, &model, FOLLOW_UP, first.session.clone()).await;
    assert_resumed(&first, &second);
    // The scripted model picks its step by the assistant turns so far: two came from round 1.
    assert_eq!(second.message, "Round two: fixed the capybara.");
    let requests = messages(&model);
    let resumed = &requests[before];
    let turns = resumed.body["messages"].as_array().unwrap();
    let text = |m: &serde_json::Value| m.to_string();
    assert!(
        text(&turns[0]).contains("Add FIRST.md"),
        "{:#}",
        resumed.body
    );
    assert!(
        turns
            .iter()
            .any(|m| m["role"] == "assistant" && text(m).contains("Round one: read the README.")),
        "{:#}",
        resumed.body
    );
    assert!(turns.iter().any(|m| text(m).contains("\"Glob\"")));
    let last = turns.last().unwrap();
    assert_eq!(last["role"], "user");
    assert!(
        text(last).contains("assertion failed: capybara"),
        "{last:#}"
    );
    assert_eq!(occurrences(resumed, FOLLOW_UP), 1);
}

/// An id that is not a session's never reaches the CLI: the round fails before anything runs.
#[tokio::test]
async fn a_hostile_session_id_is_refused_before_the_cli_runs() {
    let model = ModelServer::agent(vec![Step::Text("never".into())]).await;
    let dirs = job_dirs();
    for backend in [
        Backend::Codex(cli_options("codex", "gpt-5.5")),
        Backend::Claude(cli_options("claude", "claude-sonnet-4-5")),
    ] {
        let profile = profile(backend);
        for hostile in [
            "--config=model_provider=\"evil\"",
            "../../x",
            "x y",
            "--last",
        ] {
            let path = path_with_agent_clis();
            let env = move |name: &str| (name == "PATH").then(|| path.clone());
            let (log, _rx) = JobLog::new(nightshift::config::DEFAULT_MAX_JOB_LOG);
            let e = agent::run(AgentJob {
                profile_name: "fixer",
                profile: &profile,
                worktree: &dirs.worktree,
                prompt: FOLLOW_UP,
                home: &dirs.home,
                output_dir: &dirs.output,
                vars: Vec::new(),
                sandbox: None,
                timeout: profile.timeout,
                max_turns: None,
                max_output: profile.max_output,
                env: &env,
                log,
                model: Some(ModelAccess {
                    url: model.url.clone(),
                    token: "job-token".into(),
                    socket: PathBuf::new(),
                    in_box_port: None,
                }),
                resume: Some(hostile.into()),
                history: &[],
            })
            .await
            .unwrap_err();
            assert!(e.to_string().contains("a session id is a UUID"), "{e}");
        }
    }
    assert!(model.requests().is_empty(), "no CLI ran");
    assert!(!Path::new(&dirs.home.join(".codex")).exists());
}
