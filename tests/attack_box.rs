//! Attacks on the agent's box (issue 8, item 2): each test runs an agent that behaves as a prompt-injected
//! one would, through the real service, and asserts the attack was contained and the service stayed up.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Auth, Spine, attacker, healthy};
use nightshift::sandbox::{self, BoxSpec, Limits, Network};
use nightshift::store::JobState;

fn trigger(agent: &str) -> (String, String) {
    (
        format!("{agent}.yml"),
        format!("on:\n  issues:\n    types: [opened]\nagent: {agent}\nprompt: hi\n"),
    )
}

/// Processes on this machine whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Waits (up to 10 s) until no process carries `marker`; fails naming the survivors.
async fn wait_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_boxed_agent_reads_no_secret_no_other_repository_and_no_other_job() {
    let t = trigger("thief");
    let mut spine = Spine::new(Auth::App, &[(&t.0, &t.1)]).await;
    let root = spine.dir.path().to_owned();
    // Another repository's mirror and another job's folders, as a busy service has them.
    for (path, text) in [
        (
            "data/mirrors/someone/private.git/HEAD",
            "other-mirror-secret",
        ),
        ("data/jobs/999/event.json", "other-job-secret"),
        ("data/worktrees/job-999/notes.txt", "other-worktree-secret"),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let key = common::manifest_dir().join("tests/fixtures/test-app-key.pem");
    let script = format!(
        r#"cat > /dev/null
root=$1
leak() {{ echo "LEAK $1"; }}
# The service and its environment: no process but the box's own is visible.
for e in /proc/[0-9]*/environ; do grep -a -q -e "{secret}" -e hunter2 "$e" 2>/dev/null && leak "$e"; done
grep -a -l -e 'nightshift.*serv[e]' /proc/[0-9]*/cmdline 2>/dev/null | while read f; do leak "$f"; done
echo "processes: $(ls -d /proc/[0-9]* | wc -l)"
# The config, the key, the store, other mirrors, other jobs, the service's home.
for f in "$root/nightshift.yml" "{key}" "$root/state/nightshift.db" "$root/state/nightshift.db-wal" \
         "$root/data/mirrors/someone/private.git/HEAD" "$root/data/jobs/999/event.json" \
         "$root/data/worktrees/job-999/notes.txt" "$HOME/../../../../root/.bash_history"; do
  [ -s "$f" ] && head -c 1 "$f" >/dev/null 2>&1 && leak "$f"
done
ls "$root/data/mirrors" 2>/dev/null | grep -q someone && leak mirrors-listing
# Writes outside the worktree and the job's folders.
for f in "$root/nightshift.yml" "$root/escaped" "$root/data/escaped" /tmp/escaped /run/escaped /etc/escaped \
         "$(git rev-parse --git-common-dir)/config" "$(git rev-parse --git-common-dir)/hooks/post-checkout" \
         "$(git rev-parse --git-dir)/commondir" "$(git rev-parse --git-dir)/HEAD" \
         "$(dirname "$0")/escaped"; do
  (echo x >> "$f") 2>/dev/null && leak "write $f"
done
# The network: the fake GitHub and the service listen on this machine's loopback.
for port in {ports}; do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && leak "port $port"; done
[ -d "$(git rev-parse --git-common-dir)/objects" ] || leak "no git here"
echo checked
"#,
        secret = common::SECRET,
        key = key.display(),
        ports = "${PORTS}",
    );
    attacker(&spine, "thief", &script, ", env: [PORTS]");
    let github_port = spine
        .github
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    // The agent is given the ports to try (the service's own is learnt after start; the fake GitHub's now).
    spine
        .start_with_env(&[
            ("SOME_SERVICE_PASSWORD", "hunter2"),
            ("PORTS", &github_port),
        ])
        .await;
    spine
        .deliver_example("issues", "thief-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?} {log:?}",
        jobs[0].error
    );
    let body = &spine.github.comments()[0].body;
    assert!(body.contains("checked"), "{body}");
    assert!(!body.contains("LEAK"), "{body}");
    let processes: usize = body
        .lines()
        .find_map(|l| l.strip_prefix("processes: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        processes <= 6,
        "the box sees only its own processes: {body}"
    );
    assert!(!root.join("escaped").exists() && !root.join("data/escaped").exists());
    assert!(
        log.iter().any(|l| l.line.contains("(command, in its box)")),
        "{log:?}"
    );
    healthy(&spine).await;
}

#[tokio::test]
async fn no_agent_inherits_a_descriptor_the_service_was_started_with() {
    let boxed = trigger("boxed");
    let unboxed = trigger("unboxed");
    let mut spine = Spine::new(Auth::App, &[(&boxed.0, &boxed.1), (&unboxed.0, &unboxed.1)]).await;
    // The service's parent left a secret file open as descriptor 9, without close-on-exec.
    let secret = spine.dir.path().join("parent-secret");
    std::fs::write(&secret, "inherited-secret\n").unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    let script = r#"cat > /dev/null
open=$(ls /proc/self/fd | tr '\n' ' ')
(head -c 100 <&9) 2>/dev/null | grep -q inherited-secret && echo "LEAK fd 9"
echo "$AGENT_NAME open: $open"
"#;
    attacker(&spine, "boxed", &script.replace("$AGENT_NAME", "boxed"), "");
    attacker(
        &spine,
        "unboxed",
        &script.replace("$AGENT_NAME", "unboxed"),
        ", sandbox: none",
    );
    spine.start_with(&[], Some(&file)).await;
    spine
        .deliver_example("issues", "inherit-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:?}"
    );
    let bodies: Vec<String> = spine
        .github
        .comments()
        .into_iter()
        .map(|c| c.body)
        .collect();
    for agent in ["boxed", "unboxed"] {
        let line = bodies
            .iter()
            .flat_map(|b| b.lines())
            .find(|l| l.starts_with(&format!("{agent} open: ")))
            .unwrap_or_else(|| panic!("no report from {agent}: {bodies:?}"));
        // stdin, stdout, stderr, and `ls`'s own listing of the folder: nothing the service inherited.
        let open: Vec<&str> = line
            .split(": ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(open, ["0", "1", "2", "3"], "{agent}: {line}");
    }
    assert!(bodies.iter().all(|b| !b.contains("LEAK")), "{bodies:?}");
    healthy(&spine).await;
}

#[tokio::test]
async fn daemons_and_double_forks_end_with_their_job_and_at_its_timeout() {
    let t = trigger("lingerer");
    let t2 = (
        "stuck.yml".to_owned(),
        "on:\n  issues:\n    types: [labeled]\nagent: stuck\nprompt: hi\n".to_owned(),
    );
    let mut spine = Spine::new(Auth::Token, &[(&t.0, &t.1), (&t2.0, &t2.1)]).await;
    let marker = format!("lingers{}", std::process::id());
    // A daemon in a new session, and a double fork, each waiting long; the agent ends at once (or hangs).
    let start = format!(
        r#"cat > /dev/null
cp /bin/sleep "$TMPDIR/{marker}"
setsid "$TMPDIR/{marker}" 301 < /dev/null > /dev/null 2>&1 &
( ( "$TMPDIR/{marker}" 302 < /dev/null > /dev/null 2>&1 & ) & )
while [ "$(pgrep -c -f {marker})" -lt 2 ]; do :; done
echo "started $(pgrep -c -f {marker})" | tee /dev/stderr
"#
    );
    attacker(&spine, "lingerer", &start, "");
    attacker(
        &spine,
        "stuck",
        &format!("{start}\nexec sleep 600\n"),
        ", timeout: 3s",
    );
    spine.start().await;
    spine
        .deliver_example("issues", "linger-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert!(spine.github.comments()[0].body.contains("started 2"));
    wait_gone(&marker).await;

    spine
        .deliver_example("issues", "linger-2", "issues/labeled.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    let stuck = jobs.iter().find(|j| j.trigger == "stuck").unwrap();
    assert_eq!(stuck.state, JobState::Failed);
    assert!(
        stuck
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("ran out of time")
    );
    wait_gone(&marker).await;
    healthy(&spine).await;
}

#[tokio::test]
async fn process_memory_and_file_size_limits_hold_and_the_service_stays_up() {
    let t = trigger("hog");
    let mut spine = Spine::new(Auth::Token, &[(&t.0, &t.1)]).await;
    let script = r#"cat > /dev/null
# A fork bomb, bounded so a broken limit cannot take the machine: 200 sleepers against a limit of 64.
started=0
for i in $(seq 200); do sleep 60 2>/dev/null & [ $? -eq 0 ] && started=$((started+1)); done 2>/dev/null
alive=$(pgrep -c sleep)
kill $(jobs -p) 2>/dev/null
echo "sleepers alive: $alive"
# A memory hog: 600 MB in one process against 256 MB.
bash -c 'x=$(head -c 600000000 /dev/zero | tr "\0" a); echo "hog got ${#x}"' 2>/dev/null || echo "hog stopped"
# A huge file, and a huge sparse message: both past the 1 MB file size limit.
(head -c 2000000 /dev/zero > big) 2>/dev/null; echo "big is $(stat -c %s big) bytes"
(truncate -s 3G "$NIGHTSHIFT_OUTPUT_DIR/message.md") 2>/dev/null || echo "sparse refused"
echo "message is $(stat -c %s "$NIGHTSHIFT_OUTPUT_DIR/message.md" 2>/dev/null || echo 0) bytes"
"#;
    attacker(
        &spine,
        "hog",
        script,
        ", limits: {processes: 64, memory: 256M, file_size: 1M}",
    );
    spine.start().await;
    spine
        .deliver_example("issues", "hog-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?} {log:?}",
        jobs[0].error
    );
    let body = &spine.github.comments()[0].body;
    // The process limit does not hold here: these tests run as root, and the kernel never applies
    // RLIMIT_NPROC to root (see the next test, which runs the box as an ordinary user).
    assert!(body.contains("sleepers alive: "), "{body}");
    assert!(body.contains("hog stopped"), "{body}");
    assert!(
        body.contains("big is 1000000 bytes") || body.contains("big is 1048576 bytes"),
        "{body}"
    );
    assert!(body.contains("sparse refused"), "{body}");
    assert!(body.contains("message is 0 bytes"), "{body}");
    healthy(&spine).await;
}

#[tokio::test]
async fn a_fork_bomb_of_an_ordinary_user_hits_the_process_limit() {
    // The box as a service running as an ordinary user starts it, with processes: 64 (a uid of its own:
    // RLIMIT_NPROC counts every process of the uid on the machine).
    let uid = 40_000 + std::process::id() % 10_000;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let worktree = dir.path().join("worktree");
    std::fs::create_dir_all(&worktree).unwrap();
    std::os::unix::fs::chown(&worktree, Some(uid), Some(uid)).unwrap();
    let limits = Limits {
        processes: 64,
        ..Limits::default()
    };
    let spec = BoxSpec {
        worktree: worktree.clone(),
        read_only_worktree: false,
        writable: Vec::new(),
        read_only: Vec::new(),
        hidden: sandbox::hidden_paths(dir.path(), None, &[], ""),
        network: Network::None,
        limits,
        init: PathBuf::new(),
    };
    // Bounded, so a broken limit cannot take the machine: 200 sleepers against a limit of 64.
    let bomb = "for i in $(seq 200); do sleep 60 & echo $i > started; done";
    let argv = sandbox::command_line(&spec, &["sh".into(), "-c".into(), bomb.into()]);
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&worktree)
        .uid(uid)
        .gid(uid);
    // SAFETY: the closure only calls setrlimit.
    unsafe {
        cmd.pre_exec(move || limits.apply());
    }
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fork"), "{stderr}");
    let started: usize = std::fs::read_to_string(worktree.join("started"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((10..64).contains(&started), "{started} sleepers started");
    // The box ended with its shell: none of the sleepers is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let theirs = std::process::Command::new("ps")
            .args(["-o", "pid=,stat=,args=", "-u", &uid.to_string()])
            .output()
            .unwrap();
        if theirs.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&theirs.stdout)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `nightshift serve` (no agents: a capless root cannot map uid 0 into a user namespace, so no box)
/// as root without any capability (what an ordinary process of the service's user has), with `env`;
/// returns it once ready.
fn serve_without_capabilities(dir: &Path, env: &[(&str, &str)]) -> std::process::Child {
    use std::io::BufRead;
    std::fs::create_dir_all(dir.join("triggers")).unwrap();
    let config = dir.join("nightshift.yml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nstore: sqlite://{d}/nightshift.db\ndata_dir: {d}/data\ntriggers: {d}/triggers\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_nightshift"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_remove("NIGHTSHIFT_WEBHOOK_SECRET")
        .env_remove("NIGHTSHIFT_GITHUB_TOKEN")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        if line.contains(" ready ") {
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return child;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("nightshift did not become ready:\n{seen}");
}

fn read_without_capabilities(path: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--", "cat", path])
        .output()
        .unwrap()
}

#[tokio::test]
async fn serve_is_not_dumpable_and_its_environment_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NIGHTSHIFT_GITHUB_TOKEN", "ghp_from_the_environment"),
        ("NIGHTSHIFT_WEBHOOK_SECRET", common::SECRET),
        ("NIGHTSHIFT_GITHUB_API_URL", "http://127.0.0.1:9"),
    ];
    let mut serve = serve_without_capabilities(dir.path(), &env);
    let pid = serve.id();
    // A process of the same user and the same (no) capabilities cannot read its environment at all...
    let out = read_without_capabilities(&format!("/proc/{pid}/environ"));
    assert!(
        !out.status.success(),
        "read a non-dumpable process's environ"
    );
    // ...while it can read a dumpable one's (so the check above can fail).
    let mut plain = std::process::Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        // setpriv execs sleep: wait until the pid runs sleep, not setpriv.
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", plain.id())).unwrap_or_default();
        if comm.trim() == "sleep" || Instant::now() > deadline {
            break read_without_capabilities(&format!("/proc/{}/environ", plain.id()));
        }
        std::thread::yield_now();
    };
    plain.kill().unwrap();
    plain.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Root (CAP_SYS_PTRACE reads anything) finds the secrets scrubbed from the environment block.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("ghp_from_the_environment"), "{environ}");
    assert!(!environ.contains(common::SECRET), "{environ}");
    assert!(environ.contains("NIGHTSHIFT_GITHUB_TOKEN="), "{environ}");
    serve.kill().unwrap();
    serve.wait().unwrap();
}

#[tokio::test]
async fn the_service_environment_keeps_no_secret_for_children() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    spine
        .start_with_env(&[
            ("NIGHTSHIFT_GITHUB_TOKEN", "ghp_from_the_environment"),
            ("NIGHTSHIFT_WEBHOOK_SECRET", common::SECRET),
        ])
        .await;
    let pid = spine.server.as_ref().unwrap().pid();
    // Even root (who may read any process's environ) finds the secrets scrubbed.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("ghp_from_the_environment"), "{environ}");
    assert!(!environ.contains(common::SECRET), "{environ}");
    assert!(
        environ.contains("RUST_LOG="),
        "the rest is still there: {environ}"
    );
    healthy(&spine).await;
}

/// A unix-socket echo server standing in for the gateway: answers each line with `echo: LINE`.
fn echo_server(path: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    write
                        .write_all(format!("echo: {line}\n").as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    })
}

#[tokio::test]
async fn the_forwarder_gives_the_box_the_gateway_port_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gateway.sock");
    let _server = echo_server(&socket);
    let worktree = dir.path().join("worktree");
    std::fs::create_dir_all(&worktree).unwrap();
    let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    let spec = BoxSpec {
        worktree: worktree.clone(),
        read_only_worktree: false,
        writable: Vec::new(),
        read_only: Vec::new(),
        hidden: sandbox::hidden_paths(dir.path(), None, &[], ""),
        network: Network::Gateway {
            socket: socket.clone(),
            port: 8181,
        },
        limits: Limits::default(),
        init: PathBuf::from(env!("CARGO_BIN_EXE_nightshift")),
    };
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/8181 && echo hello >&3 && read -r answer <&3 && echo \"$answer\"; \
         exec 3>&-; \
         curl -s -m 5 http://127.0.0.1:8181/ >/dev/null 2>&1; \
         (exec 4<>/dev/tcp/127.0.0.1/{outside_port}) 2>/dev/null && echo reached-outside; \
         exit 7"
    );
    let argv = sandbox::command_line(&spec, &["bash".into(), "-c".into(), script]);
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "echo: hello\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "box-init exits with the agent's status"
    );
}

#[tokio::test]
async fn a_prompt_injected_claude_code_runs_its_shell_in_the_box() {
    use common::model_server::{ModelServer, Step};
    // The model (as an injected prompt would have it) makes Claude Code run a shell command that hunts
    // for the service's secrets and tries to escape; what it found comes back to the model.
    let t = trigger("injected");
    let mut spine = Spine::new(Auth::Token, &[(&t.0, &t.1)]).await;
    let root = spine.dir.path().display().to_string();
    let hunt = format!(
        "for f in {root}/nightshift.yml {root}/state/nightshift.db /proc/*/environ; do \
         grep -a -q -e ghp_test_token -e Everybody -e hunter2 \"$f\" 2>/dev/null && echo \"LEAK $f\"; done; \
         (echo x > {root}/escaped) 2>/dev/null && echo LEAK-write; echo hunt-done"
    );
    let model = ModelServer::agent(vec![
        Step::Tool {
            name: "Bash".into(),
            input: serde_json::json!({"command": hunt, "description": "look around"}),
        },
        Step::Text("Nothing to see.".into()),
    ])
    .await;
    spine.add_agents(&format!(
        "  injected: {{claude: {{model: claude-sonnet-4-5, base_url: \"{}\", api_key_env: TEST_CLAUDE_KEY, \
         allowed_tools: [Bash]}}, max_turns: 5, timeout: 120s}}\n",
        model.url
    ));
    spine
        .start_with_env(&[
            ("PATH", &common::path_with_agent_clis()),
            ("TEST_CLAUDE_KEY", "sk-ant-test"),
            ("NIGHTSHIFT_GITHUB_TOKEN", common::TOKEN),
            ("SOME_SERVICE_PASSWORD", "hunter2"),
        ])
        .await;
    spine
        .deliver_example("issues", "injected-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?} {log:#?}",
        jobs[0].error
    );
    assert!(
        log.iter().any(|l| l.line.contains("(claude, in its box)")),
        "{log:#?}"
    );
    // The tool's output, as Claude Code sent it back to the model.
    let last = model.requests().last().unwrap().body.clone();
    let results: Vec<String> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|c| c["type"] == "tool_result")
        .map(|c| c["content"].to_string())
        .collect();
    assert_eq!(results.len(), 1, "{last}");
    assert!(
        results[0].contains("hunt-done"),
        "the command ran: {results:?}"
    );
    assert!(!results[0].contains("LEAK"), "{results:?}");
    assert!(!spine.dir.path().join("escaped").exists());
    healthy(&spine).await;
}

/// What the box costs per job: a trivial agent (`true`) run through the same code path boxed (with the
/// hidden paths of a real service) and unboxed. Run with `cargo test --test attack_box -- --ignored
/// --nocapture measure`; prints the medians.
#[tokio::test]
#[ignore]
async fn measure_box_startup() {
    use nightshift::agent::command::{Launch, Stdout, run};
    let dir = tempfile::tempdir().unwrap();
    let worktree = dir.path().join("worktree");
    std::fs::create_dir_all(&worktree).unwrap();
    let spec = BoxSpec {
        worktree: worktree.clone(),
        read_only_worktree: false,
        writable: vec![dir.path().join("home")],
        read_only: Vec::new(),
        hidden: sandbox::hidden_paths(
            &dir.path().join("data"),
            Some(Path::new("/root")),
            &[dir.path().join("nightshift.yml")],
            &format!("sqlite://{}/data/db", dir.path().display()),
        ),
        network: Network::None,
        limits: Limits::default(),
        init: PathBuf::new(),
    };
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    let env = |name: &str| (name == "PATH").then(|| std::env::var("PATH").unwrap());
    let mut medians = Vec::new();
    for boxed in [false, true] {
        let mut times = Vec::new();
        for _ in 0..40 {
            let (tx, _rx) = nightshift::agent::log::JobLog::new(1 << 20);
            let started = Instant::now();
            let out = run(
                Launch {
                    argv: vec!["true".into()],
                    worktree: &worktree,
                    stdin: "",
                    allow: &[],
                    vars: Vec::new(),
                    timeout: Duration::from_secs(10),
                    sandbox: boxed.then_some(&spec),
                    limits: Limits::default(),
                    stdout: Stdout::Capture(10),
                },
                &env,
                tx,
            )
            .await
            .unwrap();
            assert!(out.succeeded());
            times.push(started.elapsed());
        }
        times.sort();
        medians.push(times[times.len() / 2]);
    }
    println!(
        "trivial agent: unboxed {:?}, boxed {:?} (x{:.1}, +{:?})",
        medians[0],
        medians[1],
        medians[1].as_secs_f64() / medians[0].as_secs_f64(),
        medians[1] - medians[0]
    );
}

/// A config with one command profile, `extra` YAML keys added to it, in `dir`.
fn small_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("triggers")).unwrap();
    let config = dir.join("nightshift.yml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nstore: sqlite://{d}/nightshift.db\ndata_dir: {d}/data\ntriggers: {d}/triggers\n\
             github:\n  webhook_secrets: [s]\nagents:\n  plain: {{command: [/bin/true]{extra}}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn without_bubblewrap_serve_refuses_unless_every_profile_chose_none_and_check_warns() {
    let dir = tempfile::tempdir().unwrap();
    // A PATH without bwrap (nor anything else).
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let serve = |config: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("PATH", &empty)
            .env_remove("NIGHTSHIFT_WEBHOOK_SECRET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let boxed = small_config(dir.path(), "");
    let out = serve(&boxed).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to start: agent profile(s) plain run in the box"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bubblewrap (`bwrap`) is not installed"),
        "{stderr}"
    );
    assert!(stderr.contains("sandbox: none"), "{stderr}");

    // With `sandbox: none` it starts, and says what that means.
    let unboxed = small_config(dir.path(), ", sandbox: none");
    let mut child = serve(&unboxed);
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(" ready ") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.contains(" ready "), "{seen}");
    assert!(
        seen.contains("agent profile(s) `plain` run without the box (`sandbox: none`)"),
        "{seen}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["--config", unboxed.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: agent profile(s) `plain` run without the box"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_daemon_does_not_outlive_a_killed_service() {
    let t = trigger("survivor");
    let mut spine = Spine::new(Auth::Token, &[(&t.0, &t.1)]).await;
    let marker = format!("survives{}", std::process::id());
    let script = format!(
        r#"cat > /dev/null
cp /bin/sleep "$TMPDIR/{marker}"
setsid "$TMPDIR/{marker}" 304 < /dev/null > /dev/null 2>&1 &
while ! pgrep -f {marker} > /dev/null; do :; done
echo "daemon up" >&2
exec sleep 600
"#
    );
    attacker(&spine, "survivor", &script, ", timeout: 120s");
    spine.start().await;
    spine
        .deliver_example("issues", "survivor-1", "issues/opened.json")
        .await;
    // Wait for the job, then for the daemon's word in its log.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        if let Some(job) = spine.jobs().await.first() {
            break job.id;
        }
        assert!(Instant::now() < deadline, "no job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    spine.wait_for_log_line(job, "daemon up").await;
    assert!(!processes_with(&marker).is_empty(), "the daemon runs");
    spine.kill();
    wait_gone(&marker).await;
}

#[tokio::test]
async fn an_agent_filling_the_disk_is_stopped_at_its_limit_and_its_files_go() {
    let t = trigger("filler");
    let mut spine = Spine::new(Auth::Token, &[(&t.0, &t.1)]).await;
    // What a prompt-injected agent does to take the service down with it: write until the disk is full
    // (bounded here at 400 MiB, so a broken limit cannot fill this machine's disk), in the worktree and
    // in its temporary folder, each file under the one-file limit. A sparse file uses no disk, and is no
    // reason to stop it.
    let script = r#"cat > /dev/null
truncate -s 900M sparse
mkdir -p fill "$TMPDIR/fill"
for i in $(seq 200); do
  head -c 1048576 /dev/zero > "fill/$i"
  head -c 1048576 /dev/zero > "$TMPDIR/fill/$i"
done
echo "filled" > "$NIGHTSHIFT_OUTPUT_DIR/message.md"
sleep 600
"#;
    attacker(
        &spine,
        "filler",
        script,
        ", timeout: 120s, limits: {disk: 64M}",
    );
    spine.start().await;
    spine
        .deliver_example("issues", "filler-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(jobs[0].state, JobState::Failed, "{log:?}");
    let error = jobs[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("the job's folders held more than 64.0 MiB (`limits.disk` of its agent profile): its agent was stopped"),
        "{error}"
    );
    // Stopped at its limit, not at its timeout nor after it wrote all it meant to.
    assert!(!error.contains("timed out"), "{error}");
    let body = &spine.github.comments()[0].body;
    assert!(body.contains("limits.disk"), "{body}");
    assert!(!body.contains("filled"), "{body}");
    // Its processes and its folders are gone.
    wait_gone("attackers/filler.sh").await;
    let data = spine.dir.path().join("data");
    for folder in ["worktrees", "jobs"] {
        let left: Vec<_> = std::fs::read_dir(data.join(folder))
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{folder}: {left:?}");
    }
    healthy(&spine).await;
}

#[tokio::test]
async fn a_nearly_full_disk_stops_running_jobs_so_the_store_keeps_room() {
    // What no walk of a job's folders sees (a file deleted and held open, one moved out of the walk's way)
    // still takes the disk's free space: below `min_free_disk` the running job holding the most (here the
    // only one) stops. Here the floor is set above what any disk has free, so the job is stopped as soon
    // as it runs.
    let t = trigger("holder");
    let mut spine = Spine::new(Auth::Token, &[(&t.0, &t.1)]).await;
    let script = r#"cat > /dev/null
exec 3> held && rm held
echo "held" > "$NIGHTSHIFT_OUTPUT_DIR/message.md"
sleep 600
"#;
    attacker(&spine, "holder", script, ", timeout: 120s");
    let text = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(&spine.config, format!("{text}\nmin_free_disk: 1000000T\n")).unwrap();
    spine.start().await;
    spine
        .deliver_example("issues", "holder-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(jobs[0].state, JobState::Failed, "{log:?}");
    let error = jobs[0].error.clone().unwrap_or_default();
    assert!(
        error.starts_with("the disk of nightshift's data dir has ")
            && error.contains(
                "free, less than the 1000000.0 TiB it keeps free for its store (`min_free_disk`)"
            ),
        "{error}"
    );
    // GitHub is told the job stopped, not how full the service's disk is.
    let body = &spine.github.comments()[0].body;
    assert!(body.contains("the service's disk is nearly full"), "{body}");
    assert!(!body.contains("TiB") && !body.contains("GiB"), "{body}");
    wait_gone("attackers/holder.sh").await;
    healthy(&spine).await;
}

/// Runs the agent `name` (the shell `script`) for one opened issue, to its end: the job must succeed, and
/// the comment it posted is returned (what the script wrote to its message).
async fn one_succeeded_job(name: &str, script: &str) -> (Spine, String) {
    let t = trigger(name);
    let mut spine = Spine::new(Auth::Token, &[(&t.0, &t.1)]).await;
    attacker(&spine, name, script, "");
    spine.start().await;
    spine
        .deliver_example("issues", &format!("{name}-1"), "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{log:?}");
    let body = spine.github.comments()[0].body.clone();
    (spine, body)
}

#[tokio::test]
async fn fallocate_and_io_uring_are_refused_so_nothing_takes_disk_faster_than_it_is_measured() {
    // `fallocate` with FALLOC_FL_KEEP_SIZE on a deleted file took 256 MiB of disk in a millisecond, past
    // the one-file limit and where no walk of the job's folders sees it; io_uring's operations are no
    // system calls a filter sees. A plain write still works, within the limits.
    let script = r#"cat > /dev/null
out="$NIGHTSHIFT_OUTPUT_DIR/message.md"
exec 3> held
rm held
fallocate --keep-size -l 256M /proc/self/fd/3 2>&1 | sed 's/^/keep-size: /' >> "$out"
fallocate -l 64M plain 2>&1 | sed 's/^/plain: /' >> "$out"
echo "plain is $(stat -c %s plain) bytes" >> "$out"
python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
params = (ctypes.c_uint32 * 30)()
fd = libc.syscall(425, 8, params)
print("io_uring_setup:", fd, os.strerror(ctypes.get_errno()))
' >> "$out"
head -c 1000 /dev/zero > written && echo "written is $(stat -c %s written) bytes" >> "$out"
"#;
    let (spine, body) = one_succeeded_job("allocator", script).await;
    assert!(
        body.contains("keep-size: fallocate: fallocate failed: keep size mode is unsupported"),
        "{body}"
    );
    assert!(
        body.contains("plain: fallocate: fallocate failed: Operation not supported"),
        "{body}"
    );
    assert!(body.contains("plain is 0 bytes"), "{body}");
    assert!(
        body.contains("io_uring_setup: -1 Function not implemented"),
        "{body}"
    );
    assert!(body.contains("written is 1000 bytes"), "{body}");
    healthy(&spine).await;
}

#[tokio::test]
async fn no_user_namespace_can_be_made_in_the_box_so_no_tmpfs_takes_memory_past_the_limits() {
    // In a user namespace of its own (`unshare -Ur`), an unprivileged process may mount a tmpfs (and its
    // pages are no rlimit's): many of them take the machine's memory, the service's with it.
    let script = r#"cat > /dev/null
out="$NIGHTSHIFT_OUTPUT_DIR/message.md"
r=$(unshare -U true 2>&1) && echo "user: made" >> "$out" || echo "user: $r" >> "$out"
r=$(unshare -Urm sh -c 'mount -t tmpfs none /tmp && echo mounted' 2>&1); echo "tmpfs: $r" >> "$out"
echo done >> "$out"
"#;
    let (spine, body) = one_succeeded_job("nester", script).await;
    assert!(body.contains("done"), "{body}");
    assert!(
        body.contains("user: unshare: unshare failed: No space left on device"),
        "{body}"
    );
    assert!(!body.contains("user: made"), "{body}");
    assert!(!body.contains("mounted"), "{body}");
    healthy(&spine).await;
}

/// Free bytes on the filesystem holding `path`, as an unprivileged process may use them.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed out-struct the call fills.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

#[tokio::test]
async fn at_the_disk_floor_the_job_holding_the_most_is_stopped_and_the_others_go_on() {
    let (big, small) = (trigger("big"), trigger("small"));
    let mut spine = Spine::new(Auth::Token, &[(&big.0, &big.1), (&small.0, &small.1)]).await;
    // A job writing until the disk runs low (in 1 MiB files, each well within every limit), and one
    // writing nothing, running at the same time.
    attacker(
        &spine,
        "big",
        r#"cat > /dev/null
sleep 1
mkdir fill
for i in $(seq 4000); do head -c 1048576 /dev/zero > "fill/$i"; done
sleep 600
"#,
        ", timeout: 120s",
    );
    attacker(
        &spine,
        "small",
        r#"cat > /dev/null
sleep 6
echo "small finished" > "$NIGHTSHIFT_OUTPUT_DIR/message.md"
"#,
        ", timeout: 120s",
    );
    // The floor 300 MiB under what is free now: the big job takes the disk below it within a second.
    let floor = free_bytes(spine.dir.path()).saturating_sub(300 << 20);
    let text = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(&spine.config, format!("{text}\nmin_free_disk: {floor}\n")).unwrap();
    spine.start().await;
    spine
        .deliver_example("issues", "floor-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    let by = |name: &str| jobs.iter().find(|j| j.trigger == name).unwrap().clone();
    let (big, small) = (by("big"), by("small"));
    let error = big.error.clone().unwrap_or_default();
    assert_eq!(big.state, JobState::Failed, "{error}");
    assert!(
        error.contains("(`min_free_disk`): of the running jobs, this one's folders held the most"),
        "{error}"
    );
    assert_eq!(small.state, JobState::Succeeded, "{:?}", small.error);
    assert!(
        spine
            .github
            .comments()
            .iter()
            .any(|c| c.body.contains("small finished"))
    );
    wait_gone("attackers/big.sh").await;
    // The big job's files went with it: the disk has its room back.
    assert!(free_bytes(spine.dir.path()) > floor);
    healthy(&spine).await;
}
