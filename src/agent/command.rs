//! Running an agent process: a program in the job's worktree with its input on stdin, a reduced
//! environment, resource limits, usually in its box ([`crate::sandbox`]), and a timeout that kills it and
//! everything it started. Its stdout is either its final message (a command agent) or a stream of JSON
//! events that a backend reads line by line (the agent CLIs); stderr lines go to the job log as they come.
//! Lines are capped in length, so a stream without newlines cannot grow the service.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::EnvLookup;
use crate::sandbox::harden::BASE_ENV;
use crate::sandbox::{self, BoxSpec, Limits};
use crate::store::LogStream;

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
    /// The box the process runs in; None runs it as the service's plain child (`sandbox: none`).
    pub sandbox: Option<&'a BoxSpec>,
    pub limits: Limits,
    pub stdout: Stdout,
}

/// The longest stderr line kept whole in the job log; the rest of a longer line is dropped.
pub const MAX_LOG_LINE: usize = 16 * 1024;
/// The longest stdout line handed over whole (an agent CLI's JSON event, its final message included).
pub const MAX_EVENT_LINE: usize = 8 * 1024 * 1024;

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
    let argv = match launch.sandbox {
        None => launch.argv.clone(),
        Some(spec) => {
            // Inside the box bubblewrap would be the one to find the program missing, as an exit status; an
            // agent that is not installed is the operator's problem and is said as one.
            let program = launch
                .argv
                .first()
                .context("the agent has an empty command")?;
            anyhow::ensure!(
                find_program(program, service_env("PATH").as_deref()),
                "cannot start the agent `{}`: no such program (is it installed and on PATH?)",
                launch.argv.join(" ")
            );
            sandbox::command_line(spec, &launch.argv)
        }
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
    let limits = launch.limits;
    let filters = sandbox::syscall_filters()?;
    let service = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit(2), prctl(2),
    // seccomp(2) and getppid(2), which are async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            limits.apply()?;
            sandbox::apply_syscall_filters(&filters)?;
            // The agent dies with the service, even killed -9 (no cleanup runs then): it never lives on
            // unwatched, holding its worktree. In a box, bubblewrap's `--die-with-parent` takes the whole
            // box down with it; without one, this reaches the agent's own process. The service may have
            // died between the fork and here: then the signal would never come, so refuse to start.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if u32::try_from(libc::getppid()).ok() != Some(service) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
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
            read_lines(BufReader::new(stdout), MAX_EVENT_LINE, |line| each(line)).await?;
            Ok((String::new(), false))
        }),
    };

    let err_pipe = child.stderr.take().context("agent stderr")?;
    let err_reader = tokio::spawn(async move {
        let _ = read_lines(BufReader::new(err_pipe), MAX_LOG_LINE, |line| {
            let _ = log.send((LogStream::Stderr, line.to_owned()));
        })
        .await;
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

/// Hands `each` every line of `reader` (without its newline, lossily decoded), cut at `max` bytes: the rest
/// of a longer line is read and dropped, so no line holds more than `max` bytes in memory.
async fn read_lines(
    mut reader: impl AsyncBufRead + Unpin,
    max: usize,
    mut each: impl FnMut(&str),
) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut cut = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if !line.is_empty() || cut {
                each(&finish(&line, cut));
            }
            return Ok(());
        }
        let (chunk, ended) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = max.saturating_sub(line.len());
        if chunk.len() > room {
            cut = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = ended.unwrap_or(buf.len());
        reader.consume(used);
        if ended.is_some() {
            each(&finish(&line, cut));
            line.clear();
            cut = false;
        }
    }
}

fn finish(line: &[u8], cut: bool) -> String {
    let mut text = String::from_utf8_lossy(line).into_owned();
    if text.ends_with('\r') {
        text.pop();
    }
    if cut {
        text.push_str(" [line cut: longer than nightshift keeps]");
    }
    text
}

/// Whether `program` (a path, or a name looked up on `path`) is an executable file.
fn find_program(program: &str, path: Option<&str>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    path.unwrap_or_default()
        .split(':')
        .filter(|dir| !dir.is_empty())
        .any(|dir| executable(&Path::new(dir).join(program)))
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
            limits: Limits::default(),
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

    /// Runs `script` in a box with `writable` bound; returns its stdout.
    async fn sandboxed(
        script: &str,
        worktree: &Path,
        writable: &[std::path::PathBuf],
        network: sandbox::Network,
    ) -> String {
        let env = |name: &str| match name {
            "PATH" => std::env::var("PATH").ok(),
            _ => None,
        };
        let (tx, _rx) = super::super::log::JobLog::new(1 << 20);
        let spec = BoxSpec {
            worktree: worktree.to_owned(),
            read_only_worktree: false,
            writable: writable.to_vec(),
            read_only: Vec::new(),
            hidden: Vec::new(),
            network,
            limits: Limits::default(),
            init: Default::default(),
        };
        let out = run(
            Launch {
                stdin: "",
                vars: Vec::new(),
                sandbox: Some(&spec),
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
    async fn the_box_confines_writes_and_network() {
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
        let out = sandboxed(
            &script,
            worktree.path(),
            &[home.path().to_owned()],
            sandbox::Network::None,
        )
        .await;
        assert_eq!(
            out,
            "ok-worktree\nok-home\nblocked-outside\nblocked-etc\nnet-blocked\n"
        );
        assert!(worktree.path().join("inside.txt").exists());
        assert!(!outside.path().join("escape").exists());
        let out = sandboxed(
            &script,
            worktree.path(),
            &[home.path().to_owned()],
            sandbox::Network::Host,
        )
        .await;
        assert!(
            out.ends_with("net-open\n"),
            "a profile can allow the network: {out}"
        );
    }

    #[tokio::test]
    async fn a_dropped_run_takes_every_process_of_its_box_with_it() {
        let worktree = tempfile::tempdir().unwrap();
        let marker = format!("dropped{}", std::process::id());
        let script = format!(
            "cp /bin/sleep ./{marker}; setsid ./{marker} 303 </dev/null >/dev/null 2>&1 & \
             while ! pgrep -f {marker} >/dev/null; do :; done; touch ready; exec sleep 600"
        );
        let spec = BoxSpec {
            worktree: worktree.path().to_owned(),
            read_only_worktree: false,
            writable: Vec::new(),
            read_only: Vec::new(),
            hidden: Vec::new(),
            network: sandbox::Network::None,
            limits: Limits::default(),
            init: Default::default(),
        };
        let env = |name: &str| (name == "PATH").then(|| std::env::var("PATH").unwrap());
        let (tx, _rx) = super::super::log::JobLog::new(1 << 20);
        let ready = worktree.path().join("ready");
        let run = run(
            Launch {
                sandbox: Some(&spec),
                ..launch(&script, worktree.path(), Duration::from_secs(60))
            },
            &env,
            tx,
        );
        // The job's future runs until the daemon is up, then is dropped (a cancelled job).
        tokio::select! {
            _ = run => panic!("the agent ended by itself"),
            () = async { while !ready.exists() { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
        }
        let running = |m: &str| {
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(m))
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running(&marker) {
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon outlived its job"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_dropped() {
        let text = format!("short\n{}\nlast", "x".repeat(100));
        let mut seen = Vec::new();
        read_lines(text.as_bytes(), 10, |l| seen.push(l.to_owned()))
            .await
            .unwrap();
        assert_eq!(
            seen,
            [
                "short",
                "xxxxxxxxxx [line cut: longer than nightshift keeps]",
                "last"
            ]
        );
    }

    #[tokio::test]
    async fn a_newline_free_stream_does_not_grow_the_service() {
        // 64 MiB without a newline on stderr: the job log gets one cut line, the run ends normally.
        let (out, log) = run_script(
            "head -c 67108864 /dev/zero | tr '\\0' x >&2; echo done",
            Duration::from_secs(60),
        )
        .await;
        assert!(out.succeeded(), "{out:?}");
        assert_eq!(log.len(), 1);
        assert!(log[0].len() < MAX_LOG_LINE + 100, "{}", log[0].len());
    }

    #[tokio::test]
    async fn a_failing_agent_reports_its_status() {
        let (out, _) = run_script("exit 3", Duration::from_secs(10)).await;
        assert_eq!(out.status.and_then(|s| s.code()), Some(3));
        assert!(!out.succeeded());
    }
}
