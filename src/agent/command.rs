//! Running an agent process: a program in the job's worktree with its input on stdin, a reduced
//! environment, and a timeout that kills its whole process group. Its stdout is either its final message
//! (a command agent) or a stream of JSON events that a backend reads line by line (the agent CLIs); stderr
//! lines go to the job log as they come.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::config::SandboxKind;
use crate::queue::EnvLookup;
use crate::store::LogStream;

/// Variables every agent may see, when the service has them. Everything else is withheld unless the
/// profile lists it under `env`: the webhook secret, the GitHub token and the App key never reach an agent.
const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM",
];

/// How a process is started.
pub struct Launch<'a> {
    pub argv: Vec<String>,
    pub worktree: &'a Path,
    /// Written to stdin, which is then closed.
    pub stdin: &'a str,
    /// Names of service variables passed through, besides the base allow-list.
    pub allow: &'a [String],
    /// Set as given (job variables, the backend's own), after the allowed ones.
    pub vars: Vec<(String, String)>,
    pub timeout: Duration,
    pub sandbox: Option<Sandbox<'a>>,
    pub stdout: Stdout,
}

/// A bubblewrap sandbox around the process.
pub struct Sandbox<'a> {
    pub kind: SandboxKind,
    pub paths: &'a SandboxPaths,
    pub network: bool,
}

/// What happens to the process's stdout.
pub enum Stdout {
    /// Kept as the final message, up to this many bytes.
    Capture(usize),
    /// Handed over line by line.
    Lines(Box<dyn FnMut(&str) + Send>),
}

/// What a process run produced.
#[derive(Debug)]
pub struct Finished {
    pub status: Option<ExitStatus>,
    /// stdout when captured (empty when handed over as lines).
    pub stdout: String,
    /// True when stdout was longer than the cap and was cut.
    pub truncated: bool,
    pub timed_out: bool,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }
}

/// Runs the process; `service_env` answers for the allowed variables, `log` receives its stderr lines.
pub async fn run(
    launch: Launch<'_>,
    service_env: &EnvLookup,
    log: super::log::JobLog,
) -> Result<Finished> {
    let argv = match &launch.sandbox {
        None => launch.argv.clone(),
        Some(sandbox) => match sandbox.kind {
            SandboxKind::Bubblewrap => bubblewrap(
                &launch.argv,
                launch.worktree,
                sandbox.paths,
                sandbox.network,
            ),
        },
    };
    let (program, args) = argv
        .split_first()
        .context("the agent has an empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(launch.worktree)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(launch.allow.iter().map(String::as_str))
    {
        if let Some(value) = service_env(name) {
            cmd.env(name, value);
        }
    }
    for (name, value) in &launch.vars {
        cmd.env(name, value);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the agent `{}`", launch.argv.join(" ")))?;
    // Dropping this run (the job was cancelled) kills the whole group too, not only the direct child.
    let mut group = GroupGuard(child.id().map(|id| id as i32));

    let mut stdin = child.stdin.take().context("agent stdin")?;
    let input = launch.stdin.to_owned();
    let writer = tokio::spawn(async move {
        // An agent that exits without reading its input closes the pipe; that is not our error.
        let _ = stdin.write_all(input.as_bytes()).await;
        let _ = stdin.shutdown().await;
    });

    let stdout = child.stdout.take().context("agent stdout")?;
    let reader = match launch.stdout {
        Stdout::Capture(cap) => tokio::spawn(read_capped(stdout, cap)),
        Stdout::Lines(mut each) => tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next_line().await? {
                each(&line);
            }
            Ok((String::new(), false))
        }),
    };

    let err_pipe = child.stderr.take().context("agent stderr")?;
    let err_reader = tokio::spawn(async move {
        let mut lines = BufReader::new(err_pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.send((LogStream::Stderr, line));
        }
    });

    let (status, timed_out) = match tokio::time::timeout(launch.timeout, child.wait()).await {
        Ok(status) => (Some(status?), false),
        Err(_) => (None, true),
    };
    // Whether it finished or ran out of time, nothing it started may outlive the job.
    group.kill();
    if timed_out {
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    writer.abort();
    let (stdout, truncated) = reader.await.context("reading agent stdout")??;
    let _ = err_reader.await;
    Ok(Finished {
        status,
        stdout,
        truncated,
        timed_out,
    })
}

/// What a sandboxed agent may write besides its worktree: its home, temporary and output folders, and the
/// worktree's git files. Everything else is read-only.
#[derive(Clone, Debug, Default)]
pub struct SandboxPaths {
    pub writable: Vec<PathBuf>,
}

/// `argv` wrapped in bubblewrap: everything read-only but the worktree and the writable paths, fresh /dev
/// and /proc, no network unless allowed, and the sandbox dies with nightshift. /tmp stays as it is, read-only
/// (the agent's TMPDIR is a folder of the job's own): a private /tmp would hide whatever lives under /tmp,
/// the agent's own program included.
fn bubblewrap(
    argv: &[String],
    worktree: &Path,
    paths: &SandboxPaths,
    network: bool,
) -> Vec<String> {
    let mut cmd: Vec<String> = [
        "bwrap",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
    ]
    .map(str::to_owned)
    .to_vec();
    for path in std::iter::once(&worktree.to_path_buf()).chain(&paths.writable) {
        let p = path.display().to_string();
        cmd.extend(["--bind".to_owned(), p.clone(), p]);
    }
    if !network {
        cmd.push("--unshare-net".to_owned());
    }
    cmd.extend([
        "--chdir".to_owned(),
        worktree.display().to_string(),
        "--".to_owned(),
    ]);
    cmd.extend(argv.iter().cloned());
    cmd
}

/// The agent's process group, killed when this is dropped or told to.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            kill_group(pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group we created with process_group(0); it
    // touches no memory of ours.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

async fn read_capped(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    cap: usize,
) -> Result<(String, bool)> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    Ok((String::from_utf8_lossy(&kept).into_owned(), truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch<'a>(script: &str, worktree: &'a Path, timeout: Duration) -> Launch<'a> {
        Launch {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            worktree,
            stdin: "the prompt",
            allow: ALLOW,
            vars: vec![("NIGHTSHIFT_JOB_ID".into(), "7".into())],
            timeout,
            sandbox: None,
            stdout: Stdout::Capture(64),
        }
    }

    const ALLOW: &[String] = &[];

    async fn run_script(script: &str, timeout: Duration) -> (Finished, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let env = |name: &str| match name {
            "PATH" => std::env::var("PATH").ok(),
            "ALLOWED" => Some("yes".into()),
            "NIGHTSHIFT_WEBHOOK_SECRET" | "SECRET" => Some("leak".into()),
            _ => None,
        };
        let (tx, mut rx) = super::super::log::JobLog::new(1 << 20);
        let allow = ["ALLOWED".to_owned()];
        let outcome = run(
            Launch {
                allow: &allow,
                ..launch(script, dir.path(), timeout)
            },
            &env,
            tx,
        )
        .await
        .unwrap();
        let mut lines = Vec::new();
        while let Ok((_, line)) = rx.try_recv() {
            lines.push(line);
        }
        (outcome, lines)
    }

    #[tokio::test]
    async fn prompt_on_stdin_message_on_stdout_log_on_stderr() {
        let (out, log) = run_script(
            "read p; echo \"got $p\"; echo working >&2",
            Duration::from_secs(10),
        )
        .await;
        assert!(out.succeeded());
        assert_eq!(out.stdout, "got the prompt\n");
        assert_eq!(log, ["working"]);
    }

    #[tokio::test]
    async fn the_environment_is_reduced_to_the_allow_list() {
        let (out, _) = run_script(
            "env | sort | grep -v '^PWD=\\|^SHLVL=\\|^_=\\|^PATH='",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(out.stdout, "ALLOWED=yes\nNIGHTSHIFT_JOB_ID=7\n");
    }

    #[tokio::test]
    async fn output_beyond_the_cap_is_cut_and_noted() {
        let (out, _) = run_script("yes x | head -c 1000", Duration::from_secs(10)).await;
        assert!(out.truncated);
        assert_eq!(out.stdout.len(), 64);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-alive");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let (out, _) = run_script(&script, Duration::from_millis(300)).await;
        assert!(out.timed_out && !out.succeeded());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the grandchild survived the timeout");
    }

    /// Runs `script` in a bubblewrap sandbox with `writable` bound; returns its stdout.
    async fn sandboxed(
        script: &str,
        worktree: &Path,
        writable: &[PathBuf],
        network: bool,
    ) -> String {
        let env = |name: &str| match name {
            "PATH" => std::env::var("PATH").ok(),
            _ => None,
        };
        let (tx, _rx) = super::super::log::JobLog::new(1 << 20);
        let paths = SandboxPaths {
            writable: writable.to_vec(),
        };
        let out = run(
            Launch {
                stdin: "",
                vars: Vec::new(),
                sandbox: Some(Sandbox {
                    kind: SandboxKind::Bubblewrap,
                    paths: &paths,
                    network,
                }),
                stdout: Stdout::Capture(4096),
                ..launch(script, worktree, Duration::from_secs(20))
            },
            &env,
            tx,
        )
        .await
        .unwrap();
        assert!(out.succeeded(), "{out:?}");
        out.stdout
    }

    #[tokio::test]
    async fn the_bubblewrap_sandbox_confines_writes_and_network() {
        let worktree = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = format!(
            "echo in > inside.txt && echo ok-worktree; \
             echo h > {home}/h && echo ok-home; \
             (echo x > {outside}/escape) 2>/dev/null && echo escaped || echo blocked-outside; \
             (echo x > /etc/nightshift-escape) 2>/dev/null && echo escaped || echo blocked-etc; \
             bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo net-open || echo net-blocked",
            home = home.path().display(),
            outside = outside.path().display(),
        );
        let out = sandboxed(&script, worktree.path(), &[home.path().to_owned()], false).await;
        assert_eq!(
            out,
            "ok-worktree\nok-home\nblocked-outside\nblocked-etc\nnet-blocked\n"
        );
        assert!(worktree.path().join("inside.txt").exists());
        assert!(!outside.path().join("escape").exists());
        let out = sandboxed(&script, worktree.path(), &[home.path().to_owned()], true).await;
        assert!(
            out.ends_with("net-open\n"),
            "a profile can allow the network: {out}"
        );
    }

    #[tokio::test]
    async fn a_failing_agent_reports_its_status() {
        let (out, _) = run_script("exit 3", Duration::from_secs(10)).await;
        assert_eq!(out.status.and_then(|s| s.code()), Some(3));
        assert!(!out.succeeded());
    }
}
