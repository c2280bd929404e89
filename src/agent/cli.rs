//! The built-in agent CLIs: Codex (`codex exec`) and Claude Code (`claude -p`), found on PATH and run
//! non-interactively in the job's worktree, each job with its own home (so jobs share no state), telemetry,
//! update checks and plugin sync off, permissions that never prompt, and the worktree (plus the job's output
//! folder) as the only writable place. Both print JSON events, read here line by line: what the agent does
//! goes to the job log as it happens, and what it spent (turns, tokens, cost) is kept with the job.
//!
//! Every flag passed here is checked against the installed CLI's `--help` by the test suite
//! (`tests/agent_clis.rs`), and by [`check_flags`] when the service starts.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde_json::Value;

use super::command::{self, Launch, Stdout};
use super::{AgentJob, AgentOutcome, describe_exit};
use crate::config::CliOptions;
use crate::store::{LogStream, Usage};

/// The argv of a Codex job; the prompt goes on stdin (`-`), so its length is not bounded by argv limits.
/// The session is kept (no `--ephemeral`) in `$CODEX_HOME/sessions`, in the job's home, for a follow-up
/// round to resume ([`codex_resume_argv`]).
pub fn codex_argv(options: &CliOptions, worktree: &Path, output_dir: &Path) -> Vec<String> {
    let mut argv = codex_options(options, worktree, output_dir);
    argv.push("-".into());
    argv
}

/// The argv of a Codex follow-up round: `codex exec [the first round's options] resume SESSION -`, the
/// prompt on stdin. `codex exec resume` has no `--cd` or `--add-dir` of its own; given before `resume`,
/// `exec`'s options apply to it. Fails when `session` is not a session id ([`check_session_id`]).
pub fn codex_resume_argv(
    options: &CliOptions,
    worktree: &Path,
    output_dir: &Path,
    session: &str,
) -> Result<Vec<String>> {
    check_session_id(session)?;
    let mut argv = codex_options(options, worktree, output_dir);
    argv.extend(["resume".into(), session.to_owned(), "-".into()]);
    Ok(argv)
}

fn codex_options(options: &CliOptions, worktree: &Path, output_dir: &Path) -> Vec<String> {
    let mut argv = vec![
        options.program.clone(),
        "exec".into(),
        "--json".into(),
        "--strict-config".into(),
        "--cd".into(),
        worktree.display().to_string(),
        "--add-dir".into(),
        output_dir.display().to_string(),
    ];
    if let Some(model) = &options.model {
        argv.extend(["--model".into(), model.clone()]);
    }
    argv.extend(options.args.iter().cloned());
    argv
}

/// Checks a session id before it goes on a command line: it comes from the agent's own output, which the
/// agent (and anything that steers it) controls. Only a UUID in its canonical form (8-4-4-4-12 hexadecimal
/// digits) passes, so it can never be read as an option (`--config=...`), a path (`../x`), a Codex thread
/// name, or more than one argument.
pub fn check_session_id(id: &str) -> Result<()> {
    let groups: Vec<&str> = id.split('-').collect();
    let canonical = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()));
    anyhow::ensure!(
        canonical,
        "refusing to resume session {:?}: a session id is a UUID",
        id.chars().take(80).collect::<String>()
    );
    Ok(())
}

/// `$CODEX_HOME/config.toml` for a job: a provider of our own pointing at nightshift's model gateway
/// (`gateway_url`, which holds the real key and forwards to the profile's endpoint; Codex's only credential is
/// the job's token in `$NIGHTSHIFT_MODEL_TOKEN`), no approvals, and nothing that phones home. In nightshift's
/// box (`boxed`), the box is the sandbox and Codex's own is off (`danger-full-access`): Codex's Linux sandbox
/// needs namespaces and seccomp of its own, which cannot nest in a box without capabilities. Without the box
/// (`sandbox: none`) Codex keeps its workspace-write sandbox. `AGENTS.md` is not read by Codex itself:
/// nightshift gives it from the default branch, in the prompt.
pub fn codex_config(options: &CliOptions, network: bool, boxed: bool, gateway_url: &str) -> String {
    let base_url = format!("{gateway_url}/v1");
    // A JSON string is a valid TOML basic string (the same escapes), so values need no TOML library.
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let model = options
        .model
        .as_deref()
        .map(|m| format!("model = {}\n", quote(m)))
        .unwrap_or_default();
    format!(
        "{model}model_provider = \"nightshift\"\n\
         approval_policy = \"never\"\n\
         sandbox_mode = {sandbox_mode}\n\
         check_for_update_on_startup = false\n\
         web_search = \"disabled\"\n\
         project_doc_max_bytes = 0\n\
         \n\
         [sandbox_workspace_write]\n\
         network_access = {network}\n\
         \n\
         [model_providers.nightshift]\n\
         name = \"nightshift\"\n\
         base_url = {base_url}\n\
         wire_api = \"responses\"\n\
         env_key = {env_key}\n\
         \n\
         [features]\n\
         plugins = false\n\
         remote_plugin = false\n\
         apps = false\n\
         tool_suggest = false\n\
         shell_snapshot = false\n\
         \n\
         [otel]\n\
         exporter = \"none\"\n\
         trace_exporter = \"none\"\n\
         metrics_exporter = \"none\"\n\
         \n\
         [analytics]\n\
         enabled = false\n\
         \n\
         [feedback]\n\
         enabled = false\n\
         \n\
         [history]\n\
         persistence = \"none\"\n",
        base_url = quote(&base_url),
        env_key = quote(crate::gateway::CODEX_TOKEN_VAR),
        sandbox_mode = quote(if boxed {
            "danger-full-access"
        } else {
            "workspace-write"
        }),
    )
}

/// The argv of a Claude Code job; the prompt goes on stdin. The session is kept (no
/// `--no-session-persistence`) in `$CLAUDE_CONFIG_DIR`, in the job's home, for a follow-up round to resume
/// ([`claude_resume_argv`]).
pub fn claude_argv(options: &CliOptions, output_dir: &Path, max_turns: Option<u32>) -> Vec<String> {
    claude_options(options, output_dir, max_turns, None)
}

/// The argv of a Claude Code follow-up round: the first round's with `--resume SESSION`, the prompt on
/// stdin. Fails when `session` is not a session id ([`check_session_id`]).
pub fn claude_resume_argv(
    options: &CliOptions,
    output_dir: &Path,
    max_turns: Option<u32>,
    session: &str,
) -> Result<Vec<String>> {
    check_session_id(session)?;
    Ok(claude_options(
        options,
        output_dir,
        max_turns,
        Some(session),
    ))
}

fn claude_options(
    options: &CliOptions,
    output_dir: &Path,
    max_turns: Option<u32>,
    resume: Option<&str>,
) -> Vec<String> {
    let mut argv = vec![
        options.program.clone(),
        "-p".into(),
        "--output-format".into(),
        "stream-json".into(),
        "--verbose".into(),
    ];
    // `--resume` takes an optional value: the id goes in the same argument, never read as anything else.
    if let Some(session) = resume {
        argv.push(format!("--resume={session}"));
    }
    argv.extend([
        "--permission-mode".into(),
        options.permission_mode.clone(),
        // MCP servers only from nightshift: a pull request's `.mcp.json` never starts a server.
        "--strict-mcp-config".into(),
    ]);
    if !options.allowed_tools.is_empty() {
        argv.push("--allowedTools".into());
        argv.extend(options.allowed_tools.iter().cloned());
    }
    // Options that take a list end at the next option, so this one comes after the tools.
    argv.extend(["--add-dir".into(), output_dir.display().to_string()]);
    if let Some(model) = &options.model {
        argv.extend(["--model".into(), model.clone()]);
    }
    if let Some(turns) = max_turns {
        argv.extend(["--max-turns".into(), turns.to_string()]);
    }
    argv.extend(options.args.iter().cloned());
    argv
}

/// Environment that keeps Claude Code quiet and hermetic.
const CLAUDE_QUIET: &[(&str, &str)] = &[
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_ERROR_REPORTING", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
];

pub async fn codex(options: &CliOptions, job: AgentJob<'_>) -> Result<AgentOutcome> {
    let model = job.model_access()?;
    let codex_home = job.home.join(".codex");
    tokio::fs::create_dir_all(&codex_home).await?;
    tokio::fs::write(
        codex_home.join("config.toml"),
        codex_config(
            options,
            !job.profile.egress.is_empty(),
            job.sandbox.is_some(),
            &model.url,
        ),
    )
    .await
    .context("writing Codex's config")?;
    let mut vars = job.vars.clone();
    vars.push(("CODEX_HOME".into(), codex_home.display().to_string()));
    vars.push((crate::gateway::CODEX_TOKEN_VAR.into(), model.token.clone()));
    let argv = match &job.resume {
        Some(session) => codex_resume_argv(options, job.worktree, job.output_dir, session)?,
        None => codex_argv(options, job.worktree, job.output_dir),
    };
    run(
        &job,
        argv,
        vars,
        codex_event,
        options,
        "Codex ended without completing its turn",
    )
    .await
}

pub async fn claude(options: &CliOptions, job: AgentJob<'_>) -> Result<AgentOutcome> {
    let model = job.model_access()?;
    let mut vars = job.vars.clone();
    vars.extend(
        CLAUDE_QUIET
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let key_var = if options.bearer {
        "ANTHROPIC_AUTH_TOKEN"
    } else {
        "ANTHROPIC_API_KEY"
    };
    // The job's token and nightshift's gateway, which holds the real key and knows the profile's base_url.
    vars.push((key_var.into(), model.token.clone()));
    vars.push(("ANTHROPIC_BASE_URL".into(), model.url.clone()));
    // Its settings and sessions in the job's home, whatever the service's environment says: a follow-up
    // round finds the session there, and no job sees another's.
    vars.push((
        "CLAUDE_CONFIG_DIR".into(),
        job.home.join(".claude").display().to_string(),
    ));
    let argv = match &job.resume {
        Some(session) => claude_resume_argv(options, job.output_dir, job.max_turns, session)?,
        None => claude_argv(options, job.output_dir, job.max_turns),
    };
    run(
        &job,
        argv,
        vars,
        claude_event,
        options,
        "Claude Code ended without a result",
    )
    .await
}

/// What a CLI's event stream told us.
#[derive(Debug, Default)]
pub struct Events {
    /// The agent's final message.
    pub message: Option<String>,
    pub usage: Usage,
    /// Why the run failed, when the CLI said so (its exit status may still be 0).
    pub failure: Option<String>,
    /// The run reached its end (Codex's `turn.completed`, Claude Code's `result`).
    pub completed: bool,
    /// The session id the CLI reported first, when it passed [`check_session_id`].
    pub session: Option<String>,
    /// Whether a session id was reported (the first decides: a later one may be a sub-agent's).
    session_seen: bool,
}

/// Keeps `id` as the run's session when it is the first reported and is one ([`check_session_id`]);
/// returns a line for the job log when it is refused.
fn note_session(events: &mut Events, id: &str) -> Option<String> {
    if std::mem::replace(&mut events.session_seen, true) {
        return None;
    }
    if check_session_id(id).is_ok() {
        events.session = Some(id.to_owned());
        None
    } else {
        Some(
            "the CLI reported a session id that is not a UUID: this run cannot be resumed"
                .to_owned(),
        )
    }
}

type EventFn = fn(&mut Events, &Value) -> Option<String>;

/// Runs a CLI, reading its event stream with `on_event`; `incomplete` is the failure when it exits 0
/// without reaching its end.
async fn run(
    job: &AgentJob<'_>,
    argv: Vec<String>,
    mut vars: Vec<(String, String)>,
    on_event: EventFn,
    options: &CliOptions,
    incomplete: &str,
) -> Result<AgentOutcome> {
    vars.extend(job.egress_vars());
    let state = Arc::new(Mutex::new(Events::default()));
    let seen = state.clone();
    let log = job.log.clone();
    let each = move |line: &str| {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            // Not an event: keep it, it may be the reason something failed.
            let _ = log.send((LogStream::Stdout, line.to_owned()));
            return;
        };
        let note = on_event(&mut seen.lock().expect("events lock"), &event);
        if let Some(note) = note {
            let _ = log.send((LogStream::Stdout, note));
        }
    };
    // In the box, the only network is the box's loopback, where the forwarder answers for the gateway.
    let spec = job.boxed(&options.program, job.model_access()?.network());
    let finished = command::run(
        Launch {
            argv,
            worktree: job.worktree,
            stdin: job.prompt,
            allow: &job.profile.env,
            vars,
            timeout: job.timeout,
            sandbox: spec.as_ref(),
            limits: job.profile.limits,
            stdout: Stdout::Lines(Box::new(each)),
        },
        job.env,
        job.log.clone(),
    )
    .await?;
    let mut events = std::mem::take(&mut *state.lock().expect("events lock"));
    if events.usage.model.is_none() {
        events.usage.model = options.model.clone();
    }
    if events.failure.is_none() && finished.succeeded() && !events.completed {
        events.failure = Some(incomplete.to_owned());
    }
    Ok(outcome(job, finished, events))
}

fn outcome(job: &AgentJob<'_>, finished: command::Finished, events: Events) -> AgentOutcome {
    // The CLI's own reason says more than its exit status, unless it ran out of time.
    let failure = if finished.timed_out {
        describe_exit(&finished, job.timeout)
    } else {
        events
            .failure
            .or_else(|| describe_exit(&finished, job.timeout))
    };
    let message = events.message.unwrap_or_default();
    let (message, truncated) = super::cut_at(&message, job.max_output);
    AgentOutcome {
        ended: super::ended(&finished, job.timeout),
        failure,
        message: message.to_owned(),
        truncated,
        usage: Some(events.usage),
        session: events.session,
    }
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn count(value: &Value, key: &str) -> Option<u64> {
    value.get(key).and_then(Value::as_u64)
}

fn add(total: &mut Option<u64>, more: Option<u64>) {
    if let Some(more) = more {
        *total = Some(total.unwrap_or(0) + more);
    }
}

/// One line of `codex exec --json`.
pub fn codex_event(events: &mut Events, event: &Value) -> Option<String> {
    match event.get("type")?.as_str()? {
        "thread.started" => note_session(events, event.get("thread_id")?.as_str()?),
        "item.completed" => {
            let item = event.get("item")?;
            match item.get("type")?.as_str()? {
                "agent_message" => {
                    events.message = Some(text(item, "text"));
                    None
                }
                "command_execution" => Some(format!(
                    "ran `{}` (exit {})",
                    text(item, "command"),
                    item.get("exit_code")
                        .map(Value::to_string)
                        .unwrap_or_else(|| "?".into())
                )),
                "file_change" => {
                    let changes: Vec<String> = item
                        .get("changes")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|c| format!("{} ({})", text(c, "path"), text(c, "kind")))
                        .collect();
                    Some(format!("changed {}", changes.join(", ")))
                }
                "error" => Some(format!("error: {}", text(item, "message"))),
                _ => None,
            }
        }
        "turn.completed" => {
            events.completed = true;
            let usage = event.get("usage")?;
            add(&mut events.usage.input_tokens, count(usage, "input_tokens"));
            add(
                &mut events.usage.cached_input_tokens,
                count(usage, "cached_input_tokens"),
            );
            add(
                &mut events.usage.output_tokens,
                count(usage, "output_tokens"),
            );
            None
        }
        "turn.failed" => {
            let message = event
                .get("error")
                .map(|e| text(e, "message"))
                .unwrap_or_default();
            events.failure = Some(format!("Codex failed: {message}"));
            None
        }
        "error" => Some(format!("error: {}", text(event, "message"))),
        _ => None,
    }
}

/// One line of `claude -p --output-format stream-json --verbose`.
pub fn claude_event(events: &mut Events, event: &Value) -> Option<String> {
    match event.get("type")?.as_str()? {
        "system" if text(event, "subtype") == "init" => {
            let refused = event
                .get("session_id")
                .and_then(Value::as_str)
                .and_then(|id| note_session(events, id));
            events.usage.model = event
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let started = format!(
                "Claude Code {} started (model {})",
                text(event, "claude_code_version"),
                text(event, "model")
            );
            Some(refused.map_or(started.clone(), |why| format!("{started}; {why}")))
        }
        "assistant" => {
            let content = event.get("message")?.get("content")?.as_array()?;
            let tools: Vec<String> = content
                .iter()
                .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool_use"))
                .map(|c| {
                    let input = c.get("input").cloned().unwrap_or(Value::Null);
                    let what = ["command", "file_path", "path", "pattern"]
                        .iter()
                        .find_map(|k| input.get(k).and_then(Value::as_str))
                        .unwrap_or_default();
                    format!("{} {what}", text(c, "name")).trim_end().to_owned()
                })
                .collect();
            (!tools.is_empty()).then(|| format!("tool: {}", tools.join("; ")))
        }
        "result" => {
            events.completed = true;
            // Reported at `init` already; here too, for a stream that lost its start.
            let refused = event
                .get("session_id")
                .and_then(Value::as_str)
                .and_then(|id| note_session(events, id));
            events.message = Some(text(event, "result"));
            let usage = event.get("usage");
            let u = &mut events.usage;
            u.turns = count(event, "num_turns");
            u.cost_usd = event.get("total_cost_usd").and_then(Value::as_f64);
            if let Some(usage) = usage {
                // Claude counts cache reads and writes apart from input_tokens; input is all of them.
                let input = count(usage, "input_tokens").unwrap_or(0)
                    + count(usage, "cache_read_input_tokens").unwrap_or(0)
                    + count(usage, "cache_creation_input_tokens").unwrap_or(0);
                u.input_tokens = Some(input);
                u.cached_input_tokens = count(usage, "cache_read_input_tokens");
                u.output_tokens = count(usage, "output_tokens");
            }
            let subtype = text(event, "subtype");
            let is_error = event
                .get("is_error")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if is_error || subtype != "success" {
                events.failure = Some(match subtype.as_str() {
                    "error_max_turns" => "Claude Code reached the profile's max_turns".to_owned(),
                    "error_max_budget_usd" => {
                        "Claude Code reached the profile's max_cost_usd".to_owned()
                    }
                    _ => format!("Claude Code failed ({subtype}): {}", text(event, "result")),
                });
            }
            let denied = event
                .get("permission_denials")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let denied = (denied > 0).then(|| {
                format!(
                    "{denied} tool call(s) were denied: the profile's permission_mode and allowed_tools \
                     decide what Claude Code may do"
                )
            });
            match (refused, denied) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            }
        }
        _ => None,
    }
}

/// Flags Claude Code accepts and honours but leaves out of its `--help` (2.1.197). Each is proven by a test
/// of its behaviour instead (`tests/agent_backends.rs`: `max_turns` ends a run at its limit).
pub const CLAUDE_UNLISTED_FLAGS: &[&str] = &["--max-turns"];

/// Checks that every flag nightshift passes to the CLI exists in its `--help` (or in `unlisted`, flags
/// proven by behaviour). Returns the missing ones.
pub async fn check_flags(
    argv: &[String],
    help_args: &[&str],
    unlisted: &[&str],
) -> Result<Vec<String>> {
    let program = argv.first().context("empty argv")?;
    let out = tokio::process::Command::new(program)
        .args(help_args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running `{program} {}`", help_args.join(" ")))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(flags(argv)
        .into_iter()
        .filter(|flag| !help_mentions(&help, flag) && !unlisted.contains(&flag.as_str()))
        .collect())
}

/// The options in an argv (`--x`, `-x`), without values.
pub fn flags(argv: &[String]) -> Vec<String> {
    argv.iter()
        .skip(1)
        .filter(|a| a.starts_with('-') && a.len() > 1)
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect()
}

/// Whether `help` documents `flag` (as a whole word: `-p` is not found inside `--print`).
fn help_mentions(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        !before.is_some_and(|c| c == '-' || c.is_alphanumeric())
            && !after.is_some_and(|c| c == '-' || c.is_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codex_events_give_the_message_usage_and_a_log() {
        let mut events = Events::default();
        let lines = [
            json!({"type":"thread.started","thread_id":"019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b"}),
            json!({"type":"item.completed","item":{"type":"command_execution","command":"cargo test","exit_code":0}}),
            json!({"type":"item.completed","item":{"type":"file_change","changes":[{"path":"src/a.rs","kind":"update"}]}}),
            json!({"type":"item.completed","item":{"type":"agent_message","text":"Fixed it."}}),
            json!({"type":"turn.completed","usage":{"input_tokens":100,"cached_input_tokens":40,"output_tokens":7}}),
        ];
        let log: Vec<String> = lines
            .iter()
            .filter_map(|l| codex_event(&mut events, l))
            .collect();
        assert_eq!(
            log,
            ["ran `cargo test` (exit 0)", "changed src/a.rs (update)"]
        );
        assert_eq!(events.message.as_deref(), Some("Fixed it."));
        assert_eq!(
            events.session.as_deref(),
            Some("019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b")
        );
        assert!(events.completed && events.failure.is_none());
        assert_eq!(events.usage.input_tokens, Some(100));
        assert_eq!(events.usage.cached_input_tokens, Some(40));
        assert_eq!(events.usage.output_tokens, Some(7));
    }

    #[test]
    fn a_failed_codex_turn_fails_the_job_even_when_codex_exits_0() {
        let mut events = Events::default();
        codex_event(
            &mut events,
            &json!({"type":"turn.failed","error":{"message":"stream disconnected"}}),
        );
        assert_eq!(
            events.failure.as_deref(),
            Some("Codex failed: stream disconnected")
        );
    }

    #[test]
    fn claude_results_give_turns_tokens_and_cost_and_catch_errors() {
        let mut events = Events::default();
        claude_event(
            &mut events,
            &json!({"type":"system","subtype":"init","model":"claude-x","claude_code_version":"2.1.197"}),
        );
        let note = claude_event(
            &mut events,
            &json!({"type":"assistant","message":{"content":[{"type":"tool_use","name":"Edit","input":{"file_path":"src/a.rs"}}]}}),
        );
        assert_eq!(note.as_deref(), Some("tool: Edit src/a.rs"));
        claude_event(
            &mut events,
            &json!({"type":"result","subtype":"success","is_error":false,"result":"Done.","num_turns":3,
                    "total_cost_usd":0.0123,"usage":{"input_tokens":10,"cache_read_input_tokens":90,
                    "cache_creation_input_tokens":0,"output_tokens":5},"permission_denials":[]}),
        );
        assert_eq!(events.message.as_deref(), Some("Done."));
        assert_eq!(
            events.usage,
            Usage {
                model: Some("claude-x".into()),
                turns: Some(3),
                input_tokens: Some(100),
                cached_input_tokens: Some(90),
                output_tokens: Some(5),
                cost_usd: Some(0.0123),
            }
        );
        assert!(events.failure.is_none());

        // "success" with is_error (an API error), and the turn limit.
        let mut events = Events::default();
        claude_event(
            &mut events,
            &json!({"type":"result","subtype":"success","is_error":true,"result":"API Error: 500"}),
        );
        assert!(events.failure.unwrap().contains("API Error: 500"));
        let mut events = Events::default();
        claude_event(
            &mut events,
            &json!({"type":"result","subtype":"error_max_turns","is_error":true}),
        );
        assert_eq!(
            events.failure.as_deref(),
            Some("Claude Code reached the profile's max_turns")
        );
    }

    #[test]
    fn codex_turns_its_own_sandbox_off_only_inside_nightshifts_box() {
        let options = CliOptions {
            program: "codex".into(),
            model: None,
            base_url: None,
            api_key_env: "OPENAI_API_KEY".into(),
            permission_mode: "acceptEdits".into(),
            bearer: false,
            allowed_tools: Vec::new(),
            args: Vec::new(),
        };
        assert!(
            codex_config(&options, false, true, "http://127.0.0.1:4180")
                .contains("sandbox_mode = \"danger-full-access\"\n")
        );
        assert!(
            codex_config(&options, false, false, "http://127.0.0.1:9")
                .contains("sandbox_mode = \"workspace-write\"\n")
        );
    }

    fn options(program: &str) -> CliOptions {
        CliOptions {
            program: program.into(),
            model: None,
            base_url: None,
            api_key_env: "OPENAI_API_KEY".into(),
            permission_mode: "acceptEdits".into(),
            bearer: false,
            allowed_tools: vec!["Edit".into()],
            args: Vec::new(),
        }
    }

    /// A session id comes from the agent's output: anything but a UUID is refused, so it can never be an
    /// option, a path, a Codex thread name or two arguments.
    #[test]
    fn only_a_uuid_is_a_session_id() {
        for good in [
            "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b",
            "4B1A9C7E-0D2F-4E3A-9B8C-7D6E5F4A3B2C",
        ] {
            check_session_id(good).unwrap();
        }
        let hostile = [
            "",
            "--config=model_provider=\"evil\"",
            "-c",
            "--last",
            "../../x",
            "../../../etc/passwd",
            "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b x",
            "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b\n--last",
            " 019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b",
            "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b/..",
            "-19a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b",
            "019a1b2c3d4e7f608a9b0c1d2e3f4a5b",
            "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5",
            "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5g",
            "my-thread-name",
            "０19a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b",
        ];
        for id in hostile {
            let e = check_session_id(id).unwrap_err();
            assert!(
                e.to_string().contains("a session id is a UUID"),
                "{id:?}: {e}"
            );
            let out = Path::new("/tmp/out");
            assert!(codex_resume_argv(&options("codex"), Path::new("/w"), out, id).is_err());
            assert!(claude_resume_argv(&options("claude"), out, None, id).is_err());
        }
    }

    #[test]
    fn a_follow_up_round_runs_the_first_rounds_argv_with_the_session() {
        let id = "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b";
        let (w, out) = (Path::new("/w"), Path::new("/tmp/out"));
        let first = codex_argv(&options("codex"), w, out);
        let resumed = codex_resume_argv(&options("codex"), w, out, id).unwrap();
        // `exec`'s options, then `resume ID`, the prompt on stdin.
        assert_eq!(resumed[..first.len() - 1], first[..first.len() - 1]);
        assert_eq!(resumed[first.len() - 1..], ["resume", id, "-"]);
        assert!(
            !first.contains(&"--ephemeral".to_owned()),
            "kept for resuming"
        );

        let first = claude_argv(&options("claude"), out, Some(3));
        let resumed = claude_resume_argv(&options("claude"), out, Some(3), id).unwrap();
        let mut expected = first.clone();
        expected.insert(5, format!("--resume={id}"));
        assert_eq!(resumed, expected);
        assert!(!first.contains(&"--no-session-persistence".to_owned()));
    }

    #[test]
    fn the_first_session_id_reported_is_kept_if_it_is_one() {
        let id = "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b";
        let mut events = Events::default();
        codex_event(
            &mut events,
            &json!({"type":"thread.started","thread_id": id}),
        );
        // A later thread (a sub-agent's) does not replace it.
        codex_event(
            &mut events,
            &json!({"type":"thread.started","thread_id":"4b1a9c7e-0d2f-4e3a-9b8c-7d6e5f4a3b2c"}),
        );
        assert_eq!(events.session.as_deref(), Some(id));

        let mut events = Events::default();
        let note = codex_event(
            &mut events,
            &json!({"type":"thread.started","thread_id":"--config=x"}),
        );
        assert!(note.unwrap().contains("cannot be resumed"));
        codex_event(
            &mut events,
            &json!({"type":"thread.started","thread_id": id}),
        );
        assert_eq!(
            events.session, None,
            "a refused id is not replaced by a later one"
        );

        let mut events = Events::default();
        claude_event(
            &mut events,
            &json!({"type":"system","subtype":"init","model":"m","session_id": id}),
        );
        claude_event(
            &mut events,
            &json!({"type":"result","subtype":"success","is_error":false,"result":"ok","session_id": id}),
        );
        assert_eq!(events.session.as_deref(), Some(id));
        let mut events = Events::default();
        let note = claude_event(
            &mut events,
            &json!({"type":"system","subtype":"init","model":"m","session_id":"../../x"}),
        );
        assert!(note.unwrap().ends_with("this run cannot be resumed"));
        assert_eq!(events.session, None);
    }

    #[test]
    fn flags_are_found_as_whole_words_only() {
        let help = "  -p, --print   Print\n  --max-turns <n>\n";
        assert!(help_mentions(help, "-p"));
        assert!(help_mentions(help, "--max-turns"));
        assert!(!help_mentions(help, "--max"));
        assert!(!help_mentions(help, "--print-all"));
        assert_eq!(
            flags(&["claude".into(), "-p".into(), "--model=x".into(), "m".into()]),
            ["-p", "--model"]
        );
    }
}
