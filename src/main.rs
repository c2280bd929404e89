//! The `nightshift` binary: parses the command line and calls into the library.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use nightshift::config::{Config, ConfigSource};
use nightshift::trigger::{TriggerSet, load};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Check { paths } => {
            let paths = if paths.is_empty() {
                vec![config.triggers.clone()]
            } else {
                paths
            };
            let loaded = load::load(&paths, Some(&agents));
            for d in &loaded.diagnostics {
                println!("{d}");
            }
            if loaded.diagnostics.is_empty() {
                eprintln!("ok: {} trigger(s)", loaded.triggers.len());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} problem(s) found", loaded.diagnostics.len());
                Ok(ExitCode::from(1))
            }
        }
    }
}
