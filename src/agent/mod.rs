//! Running a job's agent in its worktree ([`crate::repo::workspace`]): the prompt it is given ([`prompt`]),
//! and the backends: any program ([`command`]), the Codex and Claude Code CLIs ([`cli`]), and an
//! OpenAI-compatible model endpoint ([`endpoint`]). Each reports the same [`AgentOutcome`].

pub mod cli;
pub mod command;
pub mod endpoint;
pub mod log;
pub mod prompt;
pub mod result;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{AgentProfile, Backend, PromptVia};
use crate::sandbox::{self, BoxSpec, Network};
use crate::store::Usage;

/// Reads a variable of the service's environment.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Everything a backend needs to run one job's agent.
pub struct AgentJob<'a> {
    /// The profile's name, for messages.
    pub profile_name: &'a str,
    pub profile: &'a AgentProfile,
    pub worktree: &'a Path,
    /// The final prompt ([`prompt::compose`]).
    pub prompt: &'a str,
    /// The job's own home and output folders.
    pub home: &'a Path,
    pub output_dir: &'a Path,
    /// The job's variables (`NIGHTSHIFT_*`, `HOME`, `TMPDIR`).
    pub vars: Vec<(String, String)>,
    /// The job's box (without its network or the agent's program, which the backend adds); None when the
    /// profile says `sandbox: none`.
    pub sandbox: Option<BoxSpec>,
    /// The trigger's timeout, or the profile's.
    pub timeout: Duration,
    /// The profile's turn limit, lowered by the trigger's.
    pub max_turns: Option<u32>,
    /// The profile's cap on the final message, lowered by the trigger's.
    pub max_output: usize,
    pub env: &'a EnvLookup,
    /// The job log, as the agent runs.
    pub log: log::JobLog,
    /// The model gateway's URL and the job's token, for the backends that talk to a model.
    pub model: Option<crate::gateway::ModelAccess>,
    /// A follow-up round: the session to continue ([`AgentOutcome::session`] of the round before), with
    /// `prompt` as the next user message. Codex runs `codex exec resume ID`, Claude Code `--resume ID`; the
    /// session files live in the job's `home`, which must be the same folder as the first round's. The id
    /// is checked ([`cli::check_session_id`]) before it reaches a command line: it came from the agent's
    /// output. The `command` and `openai` backends have no session: for them the follow-up prompt carries
    /// a summary of the rounds before (`command`), or `history` does (`openai`); setting it there is an
    /// error.
    pub resume: Option<String>,
    /// The rounds before, for the `openai` backend: each sent again (user, then assistant) before `prompt`.
    /// Ignored by the backends that resume a session of their own.
    pub history: &'a [Turn],
}

/// One finished round of a job's conversation: the prompt it was given and the answer it gave
/// ([`AgentOutcome::message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub prompt: String,
    pub answer: String,
}

/// How an agent run ended, whatever the backend.
#[derive(Debug)]
pub struct AgentOutcome {
    /// How it ended, for the job log (`exit status: 0`, `timed out (10m)`, `HTTP 200`).
    pub ended: String,
    /// Why it failed; None when it succeeded.
    pub failure: Option<String>,
    /// Its final message (stdout, the CLI's last message, the model's answer), up to `max_output`.
    pub message: String,
    pub truncated: bool,
    /// What it spent, when the backend reports it.
    pub usage: Option<Usage>,
    /// The session the CLI reported (Codex's `thread.started`, Claude Code's `session_id`), already checked
    /// with [`cli::check_session_id`] (one that fails the check is left out): give it as
    /// [`AgentJob::resume`] to continue the conversation. None for the `command` and `openai` backends.
    pub session: Option<String>,
}

impl AgentJob<'_> {
    /// Where the agent reaches its model: never the provider with a key, always nightshift's gateway with
    /// the job's token.
    fn model_access(&self) -> Result<&crate::gateway::ModelAccess> {
        self.model.as_ref().with_context(|| {
            format!(
                "agent `{}` talks to a model, but the job has no model gateway",
                self.profile_name
            )
        })
    }
}

impl AgentJob<'_> {
    /// `HTTPS_PROXY` (both spellings) pointing at the gateway's egress proxy with the job's token, when the
    /// profile allows egress; loopback (the gateway itself) is never proxied.
    fn egress_vars(&self) -> Vec<(String, String)> {
        let Some(model) = self
            .model
            .as_ref()
            .filter(|_| !self.profile.egress.is_empty())
        else {
            return Vec::new();
        };
        let proxy =
            model
                .url
                .replacen("http://", &format!("http://nightshift:{}@", model.token), 1);
        let mut vars = Vec::new();
        for (name, value) in [
            ("HTTPS_PROXY", proxy.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ] {
            vars.push((name.to_owned(), value.to_owned()));
            vars.push((name.to_ascii_lowercase(), value.to_owned()));
        }
        vars
    }

    /// The box for running `program` with `network`: the job's, plus the program's folder read-only (it may
    /// live in a hidden place, e.g. next to the config file).
    fn boxed(&self, program: &str, network: Network) -> Option<BoxSpec> {
        let mut spec = self.sandbox.clone()?;
        spec.network = network;
        let path = (self.env)("PATH");
        if let Some(located) = sandbox::locate_program(program, path.as_deref(), self.worktree)
            // A program in the worktree (a relative path) is a repository's file, in the box already; a
            // link there may point anywhere, and the folders it points into must not be shown for it.
            .filter(|p| !p.starts_with(self.worktree))
        {
            spec.read_only.extend(sandbox::program_folders(&located));
        }
        Some(spec)
    }
}

/// Runs the job's agent with the profile's backend.
pub async fn run(job: AgentJob<'_>) -> Result<AgentOutcome> {
    if let Some(id) = &job.resume {
        cli::check_session_id(id)?;
        anyhow::ensure!(
            matches!(job.profile.backend, Backend::Codex(_) | Backend::Claude(_)),
            "agent `{}` ({}) has no session to resume: give it the rounds before in the prompt",
            job.profile_name,
            job.profile.backend.kind()
        );
    }
    match &job.profile.backend {
        Backend::Command(argv) => run_command(argv.clone(), job).await,
        Backend::Codex(options) => cli::codex(options, job).await,
        Backend::Claude(options) => cli::claude(options, job).await,
        Backend::OpenAi(options) => endpoint::run(options, job).await,
    }
}

/// The longest single argument Linux accepts (MAX_ARG_STRLEN).
const MAX_ARGUMENT: usize = 128 * 1024;

async fn run_command(mut argv: Vec<String>, job: AgentJob<'_>) -> Result<AgentOutcome> {
    let profile = job.profile;
    let mut vars = job.vars.clone();
    let stdin = match profile.prompt_via {
        PromptVia::Stdin => job.prompt,
        PromptVia::Argument => {
            anyhow::ensure!(
                job.prompt.len() < MAX_ARGUMENT,
                "the prompt is {} bytes, more than one argument can hold ({MAX_ARGUMENT}); give agent `{}` \
                 prompt_via: file or stdin",
                job.prompt.len(),
                job.profile_name
            );
            argv.push(job.prompt.to_owned());
            ""
        }
        PromptVia::File => {
            let file = job.output_dir.with_file_name("prompt.md");
            tokio::fs::write(&file, job.prompt).await?;
            argv.push(file.display().to_string());
            vars.push(("NIGHTSHIFT_PROMPT_FILE".into(), file.display().to_string()));
            ""
        }
    };
    // A box reaches nothing but, with `egress`, nightshift's proxy on its loopback.
    let network = match &job.model {
        Some(model) if !profile.egress.is_empty() => model.network(),
        _ => Network::None,
    };
    vars.extend(job.egress_vars());
    let spec = job.boxed(argv.first().map_or("", String::as_str), network);
    let finished = command::run(
        command::Launch {
            argv,
            worktree: job.worktree,
            stdin,
            allow: &profile.env,
            vars,
            timeout: job.timeout,
            sandbox: spec.as_ref(),
            limits: profile.limits,
            stdout: command::Stdout::Capture(job.max_output),
        },
        job.env,
        job.log.clone(),
    )
    .await?;
    Ok(AgentOutcome {
        ended: ended(&finished, job.timeout),
        failure: describe_exit(&finished, job.timeout),
        truncated: finished.truncated,
        message: finished.stdout,
        usage: None,
        session: None,
    })
}

/// How a process ended, for the job log.
fn ended(finished: &command::Finished, timeout: Duration) -> String {
    match (finished.timed_out, finished.status) {
        (true, _) => format!("timed out ({})", humantime::format_duration(timeout)),
        (false, Some(status)) => status.to_string(),
        (false, None) => "unknown status".to_owned(),
    }
}

/// Why a process run failed, if it did.
fn describe_exit(finished: &command::Finished, timeout: Duration) -> Option<String> {
    if finished.timed_out {
        return Some(format!(
            "the agent ran out of time after {}",
            humantime::format_duration(timeout)
        ));
    }
    if !finished.succeeded() {
        return Some(format!(
            "the agent failed ({}); its output is in the job log",
            finished
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no exit status".into())
        ));
    }
    None
}

/// `text` cut to at most `max` bytes (at a character boundary), and whether it was cut.
pub(crate) fn cut_at(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentProfile, Backend, PromptVia};

    async fn run_with(via: PromptVia, script: &str, prompt: &str) -> Result<AgentOutcome> {
        run_round(via, script, prompt, None).await
    }

    async fn run_round(
        via: PromptVia,
        script: &str,
        prompt: &str,
        resume: Option<&str>,
    ) -> Result<AgentOutcome> {
        let dir = tempfile::tempdir().unwrap();
        let output_dir = dir.path().join("output");
        std::fs::create_dir_all(&output_dir).unwrap();
        let profile = AgentProfile {
            backend: Backend::Command(vec!["sh".into(), "-c".into(), script.into(), "sh".into()]),
            timeout: Duration::from_secs(10),
            env: Vec::new(),
            max_output: 1 << 20,
            sandbox: crate::config::SandboxKind::None,
            limits: Default::default(),
            egress: Vec::new(),
            shared: Default::default(),
            max_turns: None,
            max_tokens: None,
            max_cost_usd: None,
            prompt_via: via,
            repo_triggers: false,
        };
        let env = |name: &str| (name == "PATH").then(|| std::env::var("PATH").unwrap());
        let (log, _rx) = log::JobLog::new(crate::config::DEFAULT_MAX_JOB_LOG);
        run(AgentJob {
            profile_name: "p",
            profile: &profile,
            worktree: dir.path(),
            prompt,
            home: dir.path(),
            output_dir: &output_dir,
            vars: Vec::new(),
            sandbox: None,
            timeout: profile.timeout,
            max_turns: None,
            max_output: profile.max_output,
            env: &env,
            log,
            model: None,
            resume: resume.map(str::to_owned),
            history: &[],
        })
        .await
    }

    /// A command agent has no session: a follow-up round of one is a fresh run whose prompt carries the
    /// rounds before, and asking to resume one is a mistake said at once, before anything runs.
    #[tokio::test]
    async fn a_command_agent_has_no_session_to_resume() {
        let out = run_with(PromptVia::Stdin, "cat", "hi").await.unwrap();
        assert_eq!(out.session, None);
        let e = run_round(
            PromptVia::Stdin,
            "true",
            "again",
            Some("019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("has no session to resume"), "{e}");
        let e = run_round(PromptVia::Stdin, "true", "again", Some("--last"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a session id is a UUID"), "{e}");
    }

    /// A hostile repository makes the program a profile names by a relative path (`./tools/agent`) a link
    /// into the service's data dir: the box must not show the folder the link points into.
    #[test]
    fn a_program_linked_out_of_the_worktree_shows_nothing_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let worktree = dir.path().join("worktree");
        let secrets = dir.path().join("data").join("jobs");
        std::fs::create_dir_all(worktree.join("tools")).unwrap();
        std::fs::create_dir_all(&secrets).unwrap();
        std::os::unix::fs::symlink(&secrets, worktree.join("tools/agent")).unwrap();
        let profile = AgentProfile {
            backend: Backend::Command(vec!["./tools/agent".into()]),
            timeout: Duration::from_secs(10),
            env: Vec::new(),
            max_output: 1 << 20,
            sandbox: crate::config::SandboxKind::Bubblewrap,
            limits: Default::default(),
            egress: Vec::new(),
            shared: Default::default(),
            max_turns: None,
            max_tokens: None,
            max_cost_usd: None,
            prompt_via: PromptVia::Stdin,
            repo_triggers: false,
        };
        let env = |name: &str| (name == "PATH").then(|| "/usr/bin:/bin".to_owned());
        let (log, _rx) = log::JobLog::new(crate::config::DEFAULT_MAX_JOB_LOG);
        let spec = BoxSpec {
            worktree: worktree.clone(),
            read_only_worktree: false,
            writable: Vec::new(),
            read_only: Vec::new(),
            hidden: vec![dir.path().join("data")],
            network: Network::None,
            limits: Default::default(),
            init: Default::default(),
        };
        let job = AgentJob {
            profile_name: "p",
            profile: &profile,
            worktree: &worktree,
            prompt: "",
            home: dir.path(),
            output_dir: dir.path(),
            vars: Vec::new(),
            sandbox: Some(spec),
            timeout: profile.timeout,
            max_turns: None,
            max_output: profile.max_output,
            env: &env,
            log,
            model: None,
            resume: None,
            history: &[],
        };
        let boxed = job.boxed("./tools/agent", Network::None).unwrap();
        assert!(boxed.read_only.is_empty(), "{:?}", boxed.read_only);
        // A program on PATH still has its folder shown.
        let boxed = job.boxed("sh", Network::None).unwrap();
        assert!(!boxed.read_only.is_empty());
    }

    #[tokio::test]
    async fn a_command_agent_takes_its_prompt_on_stdin_as_an_argument_or_in_a_file() {
        let out = run_with(PromptVia::Stdin, "cat", "on stdin").await.unwrap();
        assert_eq!(out.message, "on stdin");
        let out = run_with(PromptVia::Argument, "printf %s \"$1\"; cat", "as argument")
            .await
            .unwrap();
        assert_eq!(out.message, "as argument", "stdin is empty");
        let out = run_with(
            PromptVia::File,
            "cat \"$1\"; test \"$1\" = \"$NIGHTSHIFT_PROMPT_FILE\" && echo ' (same)'",
            "in a file",
        )
        .await
        .unwrap();
        assert_eq!(out.message, "in a file (same)\n");
        let long = "x".repeat(MAX_ARGUMENT);
        let e = run_with(PromptVia::Argument, "true", &long)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("prompt_via: file or stdin"), "{e}");
    }
}
