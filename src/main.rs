//! The `nightshift` binary: parses the command line and calls into the library. The commands for people
//! on call (`jobs`, `deliveries`, `prune`) are in `cli/`.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nightshift::config::{Config, ConfigSource};
use nightshift::sandbox;
use nightshift::source::event::Event;
use nightshift::trigger::{MatchInput, Standing, TriggerSet, load};
use nightshift::yaml::Diagnostics;

#[derive(Parser)]
#[command(
    name = "nightshift",
    version,
    about = "Self-hosted runner for AI coding agents on GitHub"
)]
struct Cli {
    /// The service config file; optional when it is the default and missing.
    #[arg(
        long,
        global = true,
        env = "NIGHTSHIFT_CONFIG",
        default_value = "nightshift.yml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: receive webhooks, match triggers, run agents, deliver results.
    Serve,
    /// Check trigger files and report every problem as path:line:col (exit status 1 when there are any).
    Check {
        /// Files or folders to check (default: the configured triggers folder).
        paths: Vec<PathBuf>,
    },
    /// Show the exact prompt each firing trigger's agent would be given for an event: the rendered prompt with
    /// the repository's AGENTS.md files, the skills (in the prompt for a model endpoint) and how the result is
    /// delivered.
    Prompt {
        #[command(flatten)]
        offline: OfflineEvent,
        /// A checkout of the repository, for its AGENTS.md files and skills.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Only this trigger.
        #[arg(long)]
        trigger: Option<String>,
    },
    /// List the latest jobs (state, trigger, repository, time, what the agent spent; newest at the bottom),
    /// or show one job and its log, or follow it as it runs; `jobs cancel ID` and `jobs retry ID` act on one
    /// in the running service's store.
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        #[command(subcommand)]
        action: Option<JobsAction>,
        /// A job's id: show it with its log.
        id: Option<i64>,
        /// Print the job's log lines as they are written until it ends; exit 0 when it succeeded, 1 when
        /// it failed or was cancelled.
        #[arg(long, requires = "id", conflicts_with = "json")]
        follow: bool,
        /// Only jobs in this state (queued, running, delivering, succeeded, failed, cancelled).
        #[arg(long, value_parser = cli::parse_state)]
        state: Option<nightshift::store::JobState>,
        /// Only jobs of this repository (owner/name).
        #[arg(long)]
        repo: Option<String>,
        /// Only jobs of this trigger (its name, as `nightshift jobs` shows it).
        #[arg(long)]
        trigger: Option<String>,
        /// How many of the latest jobs to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON (an array of jobs; with an id, the job with its `log`).
        #[arg(long)]
        json: bool,
    },
    /// List the latest webhook deliveries (newest at the bottom): event, repository, delivery id, state, the
    /// jobs each fired, and for each trigger that did not fire the filter that stopped it; or show one.
    Deliveries {
        /// A delivery's id (X-GitHub-Delivery): show every trigger's verdict in full.
        id: Option<String>,
        /// Only deliveries about this repository (owner/name).
        #[arg(long)]
        repo: Option<String>,
        /// Only deliveries of this event (`issues`), or event and action (`issues.opened`).
        #[arg(long)]
        event: Option<String>,
        /// How many of the latest deliveries to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON (an array of deliveries; with an id, the delivery).
        #[arg(long)]
        json: bool,
    },
    /// Remove what the `prune:` policy no longer keeps: finished jobs (with their logs and outputs), older logs,
    /// and deliveries' payloads. The service does this every hour.
    Prune {
        /// Say what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the JSON Schema of trigger files (for editors: yaml-language-server completes and checks with it).
    Schema,
    /// Show which triggers fire for an event payload, with their rendered prompts, and why the others do not.
    Match {
        #[command(flatten)]
        offline: OfflineEvent,
        /// Print the stable JSON shape: {"fired": [...], "skipped": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// The service's renderer of a repository's templates (src/trigger/isolate.rs): requests on stdin.
    #[command(name = "render-helper", hide = true)]
    RenderHelper,
    /// Inside an agent's box: forward loopback ports to unix sockets, run the agent, exit with its status.
    #[command(name = "box-init", hide = true)]
    BoxInit {
        /// 127.0.0.1:PORT=/path/to.sock (repeatable).
        #[arg(long)]
        forward: Vec<nightshift::sandbox::init::Forward>,
        /// The agent's command.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

#[derive(Subcommand)]
enum JobsAction {
    /// Cancel a job: a queued one at once; a running one is stopped by its worker, which says it was cancelled.
    Cancel {
        /// The job's id.
        id: i64,
    },
    /// Queue a failed or cancelled job again, as a new job with the same frozen spec; prints the new job's id.
    Retry {
        /// The job's id.
        id: i64,
    },
}

/// An event to match without the service: a saved payload and the trigger files.
#[derive(clap::Args)]
struct OfflineEvent {
    /// The webhook payload (JSON), e.g. a delivery saved from GitHub's webhook log.
    #[arg(long)]
    event: PathBuf,
    /// The event's name, as GitHub sends it in X-GitHub-Event (issues, pull_request, push, ...).
    #[arg(long)]
    event_name: String,
    /// Trigger files or folder (default: the configured triggers folder).
    #[arg(long)]
    triggers: Option<PathBuf>,
    /// A file the pull request changes, for `paths` filters (repeat it; push payloads carry their own).
    #[arg(long = "changed-file")]
    changed_files: Vec<String>,
    /// What the people the payload gives no author association for (labeling, closing, pushing, runs)
    /// count as, e.g. COLLABORATOR, as the service would learn from GitHub. Without it they are unknown,
    /// and so not trusted.
    #[arg(long, value_name = "ASSOCIATION")]
    assume: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // In a box, before anything else: there is no config to read and nothing to log.
    if let Command::BoxInit { forward, argv } = cli.command {
        return nightshift::sandbox::init::main(forward, argv);
    }
    if let Command::RenderHelper = cli.command {
        return nightshift::trigger::isolate::helper_main();
    }
    nightshift::install_tls_provider();
    match try_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as `log_format` says: readable lines, or one JSON object per line with the fields of the
/// spans each event happened in (a job's id, trigger, repository and delivery).
fn init_logging(format: nightshift::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // sqlx's own INFO lines (each migration applied, Postgres notices) are noise at start.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        nightshift::config::LogFormat::Text => {
            logs.with_ansi(std::io::stderr().is_terminal()).init()
        }
        nightshift::config::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    let explicit = std::env::var_os("NIGHTSHIFT_CONFIG").is_some()
        || cli.config.as_os_str() != "nightshift.yml";
    let env = |name: &str| std::env::var(name).ok();
    Config::load(&ConfigSource {
        path: &cli.config,
        required: explicit,
        env: &env,
    })
    .map_err(|d: Diagnostics| anyhow::anyhow!("invalid configuration:\n{d}"))
}

/// What `match` and `prompt` work from: the checked triggers, a parsed payload, and the match input.
fn offline_match(
    config: &Config,
    offline: OfflineEvent,
) -> Result<(TriggerSet, Event, MatchInput)> {
    let OfflineEvent {
        event,
        event_name,
        triggers,
        changed_files,
        assume,
    } = offline;
    if let Some(a) = &assume
        && !nightshift::trigger::model::ASSOCIATIONS.contains(&a.as_str())
    {
        anyhow::bail!(
            "--assume {a}: not an author association (one of {})",
            nightshift::trigger::model::ASSOCIATIONS.join(", ")
        );
    }
    let paths = vec![triggers.unwrap_or_else(|| config.triggers.clone())];
    let loaded = load::load(&paths, Some(&config.agent_kinds()));
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    if !loaded.diagnostics.is_empty() {
        anyhow::bail!("the trigger files have problems; fix them first");
    }
    let payload = std::fs::read(&event).with_context(|| format!("reading {}", event.display()))?;
    let parsed = Event::parse(&event_name, &payload)
        .with_context(|| format!("{} is not a webhook payload", event.display()))?;
    let input = MatchInput {
        changed_files: (!changed_files.is_empty()).then_some(changed_files),
        bot_login: config.github.bot_login.clone(),
        // Offline: actors the payload gives no association for stay unknown (so untrusted) unless
        // `--assume` says what they are.
        standing: match &assume {
            Some(a) => parsed
                .principals()
                .into_iter()
                .filter(|p| p.association.is_none())
                .map(|p| (p.login.to_lowercase(), Standing::Known(a.clone())))
                .collect(),
            None => Default::default(),
        },
        // Offline: a comment's pull request is not read, so its jobs say they cannot run on its code.
        max_depth: Some(config.max_depth),
        verify: config.verify.clone(),
        ..Default::default()
    };
    Ok((TriggerSet::new(loaded.triggers), parsed, input))
}

/// Prints the final prompt of every firing trigger (or only `only`); returns how many were shown.
fn show_prompts(
    config: &Config,
    set: &TriggerSet,
    event: &Event,
    input: &MatchInput,
    repo: &std::path::Path,
    only: Option<&str>,
) -> Result<usize> {
    use nightshift::agent::prompt::{RepoContext, compose};
    let context = RepoContext::from_checkout(repo);
    let (available, problems) = nightshift::skill::available(&config.skills, repo);
    for problem in &problems {
        eprintln!("skipped an invalid skill: {problem}");
    }
    let mut shown = 0;
    for (trigger, spec) in set.fired(event, input) {
        if only.is_some_and(|name| name != trigger.name) {
            continue;
        }
        shown += 1;
        let spec = match spec {
            Ok(spec) => spec,
            Err(e) => {
                println!(
                    "=== {}: fires, but its job cannot be prepared: {e}\n",
                    trigger.name
                );
                continue;
            }
        };
        let profile = config
            .agents
            .get(&spec.agent)
            .with_context(|| format!("agent `{}` is not in the service config", spec.agent))?;
        let backend = &profile.backend;
        println!(
            "=== {} → agent `{}` ({}), output {}",
            trigger.name,
            spec.agent,
            backend.kind(),
            spec.output
        );
        println!(
            "{}",
            nightshift::sink::policy::summary(&nightshift::sink::policy::in_force(
                &spec,
                &config.limits
            ))
        );
        let selected = match nightshift::skill::select(&available, &spec.skills, spec.all_skills) {
            Ok(selected) => selected,
            Err(e) => {
                println!("the job would fail: {e}\n");
                continue;
            }
        };
        if !selected.is_empty() {
            let place = if backend.edits_files() {
                "in the worktree (.agents/skills, .claude/skills), found by the agent"
            } else {
                "in the prompt"
            };
            println!("skills {place}: {}", nightshift::skill::describe(&selected));
        }
        print_verify(trigger, &spec);
        println!(
            "--- prompt ---\n{}\n",
            compose(
                backend,
                &spec.prompt,
                spec.output,
                &context,
                &selected,
                spec.all_skills
            )
            .trim_end()
        );
    }
    Ok(shown)
}

/// The verify steps a job would run, where they come from, and the follow-up prompt the agent gets when
/// one fails (with example values for the step, status and output).
fn print_verify(trigger: &nightshift::trigger::Trigger, spec: &nightshift::trigger::JobSpec) {
    let Some(first) = spec.verify.first() else {
        let why = if trigger.verify.is_some() {
            "the trigger's `verify: []`"
        } else {
            "no `verify:` in the trigger, none in nightshift.yml for this repository"
        };
        println!("verify: none ({why})");
        return;
    };
    let from = if trigger.verify.is_some() {
        "the trigger's"
    } else {
        "nightshift.yml's default for this repository"
    };
    println!(
        "verify ({from}; {} more round(s) for the agent when a step fails; then: {}):",
        spec.verify_rounds,
        spec.verify_fail.name()
    );
    for step in &spec.verify {
        println!("  {step}");
    }
    if spec.verify_rounds > 0 {
        println!(
            "--- follow-up prompt when a step fails ---\n{}",
            nightshift::sink::texts::verify_follow_up(
                &first.name,
                "<exit status>",
                "<the end of the step's output>",
                1,
                spec.verify_rounds
            )
        );
    }
}

/// `serve`'s start: non-dumpable, secrets out of the environment (the returned snapshot is what agents may
/// be given), inherited descriptors closed on exec, and the box checked: without a working bubblewrap, serve refuses unless every profile that runs
/// a program chose `sandbox: none`.
fn harden(config: &Config) -> Result<std::collections::HashMap<String, String>> {
    sandbox::harden::non_dumpable().context("marking the process non-dumpable")?;
    sandbox::harden::close_inherited_on_exec()
        .context("keeping inherited file descriptors from child processes")?;
    // SAFETY: called from main before the tokio runtime (or any other thread) exists.
    let env = unsafe { sandbox::harden::take_secrets(&sandbox::harden::secret_names(config)) };
    if let Some(warning) = sandbox::harden::unboxed_warning(&sandbox::harden::unboxed(config)) {
        tracing::warn!("{warning}");
    }
    let boxed = sandbox::harden::boxed(config);
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 && !boxed.is_empty() {
        tracing::warn!(
            "nightshift runs as root: a boxed agent is root to the kernel too, so it can read every file of \
             the machine's that root can and the box does not hide (/etc/shadow, SSH host keys), and the \
             kernel does not apply its process limit (limits.processes, RLIMIT_NPROC), so a fork bomb is \
             stopped only by the box's end; run nightshift as a dedicated user"
        );
    }
    if !boxed.is_empty()
        && let Err(why) = sandbox::probe()
    {
        anyhow::bail!(
            "refusing to start: agent profile(s) {} run in the box, but {why}",
            boxed.join(", ")
        );
    }
    if !boxed.is_empty() && !sandbox::blocks_nested_userns() {
        tracing::warn!(
            "bubblewrap cannot keep boxed agents from making user namespaces here (`--disable-userns` \
             needs bubblewrap 0.8.0 or later): an agent can then mount a tmpfs in one of its own, whose \
             memory no limit counts, and reach more of the kernel; install bubblewrap 0.8.0 or later"
        );
    }
    Ok(env)
}

fn try_main(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli)?;
    init_logging(config.log_format);
    let agents = config.agent_kinds();
    match cli.command {
        Command::Serve => {
            // Before the runtime starts any thread: the environment may only change while there is one.
            let env = harden(&config)?;
            // A repository's templates render in helpers started from this very binary, even when the
            // file it was started from is replaced by a deploy (none when repositories' triggers are off).
            if config.repo_triggers {
                nightshift::trigger::isolate::install("/proc/self/exe".into());
            }
            nightshift::setup::require_secrets_or_setup(&config)?;
            let loaded = load::load(std::slice::from_ref(&config.triggers), Some(&agents));
            if !loaded.diagnostics.is_empty() {
                anyhow::bail!(
                    "refusing to start: the trigger files have problems (run `nightshift check`):\n{}",
                    Diagnostics(loaded.diagnostics)
                );
            }
            // gitleaks' rules are not compiled here: all of them held 15 MB of automata for as long as the
            // process lives (most of an idle server's memory) and took a core beside startup. Each rule
            // compiles on first use instead, only when a text's keywords select it; a job, minutes long,
            // waits milliseconds for the few it needs.
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(nightshift::server::serve(
                config,
                TriggerSet::new(loaded.triggers),
                env,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Match { offline, json } => {
            let (set, parsed, input) = offline_match(&config, offline)?;
            let report = set.report(&parsed, &input);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prompt {
            offline,
            repo,
            trigger,
        } => {
            let (set, parsed, input) = offline_match(&config, offline)?;
            let shown = show_prompts(&config, &set, &parsed, &input, &repo, trigger.as_deref())?;
            if shown == 0 {
                eprintln!("no trigger fires for this event; `nightshift match` says why");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs {
            action,
            id,
            follow,
            state,
            repo,
            trigger,
            limit,
            json,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                match (action, id) {
                    (Some(JobsAction::Cancel { id }), _) => cli::cancel_job(&config, id).await,
                    (Some(JobsAction::Retry { id }), _) => cli::retry_job(&config, id).await,
                    (None, Some(id)) if follow => cli::follow_job(&config, id).await,
                    (None, Some(id)) => cli::show_job(&config, id, json).await,
                    (None, None) => {
                        let filter = nightshift::store::JobFilter {
                            state,
                            repo,
                            trigger,
                            limit,
                        };
                        cli::list_jobs(&config, filter, json).await
                    }
                }
            })
        }
        Command::Deliveries {
            id,
            repo,
            event,
            limit,
            json,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                match id {
                    Some(id) => cli::show_delivery(&config, &id, json).await,
                    None => {
                        let (event, action) = cli::event_filter(event);
                        let filter = nightshift::store::DeliveryFilter {
                            repo,
                            event,
                            action,
                            limit,
                            ..Default::default()
                        };
                        cli::list_deliveries(&config, filter, json).await
                    }
                }
            })
        }
        Command::Prune { dry_run } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(cli::prune(&config, dry_run))
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&nightshift::trigger::model::schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BoxInit { .. } | Command::RenderHelper => unreachable!("handled in main"),
        Command::Check { paths } => {
            if let Some(warning) =
                sandbox::harden::unboxed_warning(&sandbox::harden::unboxed(&config))
            {
                eprintln!("warning: {warning}");
            }
            // With no paths: the configured triggers and skills.
            let (paths, skills) = if paths.is_empty() {
                (
                    vec![config.triggers.clone()],
                    nightshift::skill::discover(&config.skills, "service"),
                )
            } else {
                (paths, Default::default())
            };
            let loaded = load::load(&paths, Some(&agents));
            let problems: Vec<_> = loaded.diagnostics.iter().chain(&skills.1).collect();
            for d in &problems {
                println!("{d}");
            }
            for warning in loaded.triggers.iter().flat_map(|t| &t.warnings) {
                println!("{warning}");
            }
            // Repositories named in `repos:` that no installation covers, when a store knows installations.
            if matches!(
                config.github.auth,
                nightshift::config::GithubAuth::App { .. }
            ) {
                let runtime = tokio::runtime::Runtime::new()?;
                if let Some(installed) = runtime.block_on(
                    nightshift::source::installations::installed_offline(&config.store),
                ) {
                    let named = loaded.triggers.iter().filter_map(|t| {
                        let names = t.repos.as_ref()?.literals()?;
                        Some((t.path.as_path(), t.name.as_str(), names))
                    });
                    for warning in
                        nightshift::source::installations::not_installed_warnings(named, &installed)
                    {
                        println!("{warning}");
                    }
                }
            }
            if problems.is_empty() {
                eprintln!(
                    "ok: {} trigger(s), {} skill(s)",
                    loaded.triggers.len(),
                    skills.0.len()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} problem(s) found", problems.len());
                Ok(ExitCode::from(1))
            }
        }
    }
}
