//! The `nightshift` binary: parses the command line and calls into the library.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nightshift::config::{Config, ConfigSource};
use nightshift::source::event::Event;
use nightshift::trigger::{MatchInput, TriggerSet, load};
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
    /// Print the JSON Schema of trigger files (for editors: yaml-language-server completes and checks with it).
    Schema,
    /// Show which triggers fire for an event payload, with their rendered prompts, and why the others do not.
    Match {
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
        /// Print the stable JSON shape: {"fired": [...], "skipped": [...]}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    nightshift::install_tls_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match try_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
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

fn try_main(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli)?;
    let agents: BTreeSet<String> = config.agents.keys().cloned().collect();
    match cli.command {
        Command::Serve => {
            config.require_webhook_secrets()?;
            let loaded = load::load(std::slice::from_ref(&config.triggers), Some(&agents));
            if !loaded.diagnostics.is_empty() {
                anyhow::bail!(
                    "refusing to start: the trigger files have problems (run `nightshift check`):\n{}",
                    Diagnostics(loaded.diagnostics)
                );
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(nightshift::server::serve(
                config,
                TriggerSet::new(loaded.triggers),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Match {
            event,
            event_name,
            triggers,
            changed_files,
            json,
        } => {
            let paths = vec![triggers.unwrap_or_else(|| config.triggers.clone())];
            let loaded = load::load(&paths, Some(&agents));
            for d in &loaded.diagnostics {
                eprintln!("{d}");
            }
            if !loaded.diagnostics.is_empty() {
                anyhow::bail!("the trigger files have problems; fix them first");
            }
            let payload =
                std::fs::read(&event).with_context(|| format!("reading {}", event.display()))?;
            let parsed = Event::parse(&event_name, &payload)
                .with_context(|| format!("{} is not a webhook payload", event.display()))?;
            let input = MatchInput {
                changed_files: (!changed_files.is_empty()).then_some(changed_files),
                bot_login: config.github.bot_login.clone(),
            };
            let report = TriggerSet::new(loaded.triggers).report(&parsed, &input);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&nightshift::trigger::model::schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { paths } => {
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
