//! Running the `git` CLI: one helper that captures output and turns failures into errors that say what
//! git said.

use std::path::Path;

use anyhow::{Result, bail};
use base64::Engine;
use tokio::process::Command;

/// Credentials for git over HTTPS, passed as an `Authorization` header through git's environment config,
/// so the token appears neither in a URL, nor in a config file, nor in the process list.
#[derive(Clone, Default)]
pub struct GitAuth {
    header: Option<String>,
}

impl GitAuth {
    pub fn token(token: &str) -> GitAuth {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
        GitAuth {
            header: Some(format!("Authorization: Basic {basic}")),
        }
    }

    pub fn none() -> GitAuth {
        GitAuth::default()
    }
}

/// Runs `git args...` in `dir`, returning stdout. Never prompts for credentials.
pub async fn git(dir: &Path, args: &[&str], auth: &GitAuth) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .kill_on_drop(true);
    if let Some(header) = &auth.header {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", header);
    }
    let output = match cmd.output().await {
        Ok(output) => output,
        Err(e) => bail!("cannot run git: {e} (is git installed and on PATH?)"),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`git {}` failed ({}): {}",
            args.join(" "),
            output.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
