//! A repository's templates rendered in a helper process of their own, under the kernel's limits.
//!
//! Whoever can push an installed repository's default branch writes its triggers, and so its templates.
//! Fuel ([`super::template::FUEL`]) bounds the instructions a template runs, and the construct check
//! (`template::bounded`) refuses the ways found to build large values; but some of minijinja's work is not
//! charged by what it costs (`event.repository == event.repository` walks both subtrees for the price of
//! one comparison), so a hostile template could hold a thread for seconds per event, and a way around the
//! construct check not yet found could take the service's memory or stack with it.
//!
//! So the service renders a repository's templates (its `if:`, prompts, titles, bodies, dedupe keys and
//! concurrency groups) in `nightshift render-helper`: this same binary (`/proc/self/exe`), started with an
//! empty environment in `/`, reading requests on its stdin and answering on its stdout. Each helper limits
//! itself before it reads anything: at most [`ADDRESS_SPACE`] of memory, no core dumps, a few file
//! descriptors, a lower priority than the service's. A [`Session`] is what one event makes a repository's
//! triggers render (or one trigger file's check against the sample payloads): it takes a helper, and all
//! its requests share [`CPU_SECONDS`] of CPU (`RLIMIT_CPU`: the kernel kills the helper past that). The
//! service waits at most [`WALL`] for an answer, then kills it. Once its helper died or was killed, every
//! later request of the session fails with why (a new helper would be a new budget); the next session
//! takes a new helper. A few helpers wait between sessions ([`IDLE_HELPERS`]); one serves one session
//! at a time, and holds nothing of an earlier one (a session's event replaces the last).
//!
//! The protocol: frames of a 4-byte little-endian length and a JSON document, one answer per request.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, ExitCode, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::template::{self, Command};

/// CPU seconds one session's requests may use between them in a helper (the kernel's resolution is a
/// second): real templates use microseconds each.
pub const CPU_SECONDS: u64 = 2;

/// How long the service waits for one answer before it kills the helper (a helper short of CPU on a busy
/// machine takes longer than its CPU seconds).
pub const WALL: Duration = Duration::from_secs(15);

/// The address space of a helper: the binary, the event's payload (GitHub's are 25 MB at most: a push's
/// file lists of that size took about 310 MB parsed) and what the fuel lets a template build. At most
/// [`MAX_HELPERS`] are alive, so this is also what a way around the fuel could take of the machine's memory
/// per helper.
pub const ADDRESS_SPACE: u64 = 1 << 30;

/// Helpers kept waiting between events.
pub const IDLE_HELPERS: usize = 4;

/// Helpers started with the service, before any event needs one.
pub const READY_HELPERS: usize = 2;

/// The most helpers alive at once (in use or waiting): a render that finds them all in use waits for one,
/// up to [`WALL`]. With [`ADDRESS_SPACE`], what the helpers may hold between them.
pub const MAX_HELPERS: usize = 4;

/// A helper that was sent an event larger than this is not kept after its session: it would hold the
/// event's memory while it waits.
const LARGE_EVENT: usize = 1 << 20;

/// CPU seconds a helper may take to read one request (a 25 MB payload takes well under one).
const EXCUSED_SECONDS: u64 = 30;

/// The largest frame either side reads: a payload of 25 MB with room to spare.
const MAX_FRAME: usize = 64 << 20;

/// The subcommand a helper is started with.
pub const SUBCOMMAND: &str = "render-helper";

/// A request, as the service writes it. Externally tagged: an internally tagged enum would have serde
/// buffer the whole payload once more before reading it.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Request<'a> {
    /// A session begins: the CPU seconds it may use between all its requests start now.
    Begin,
    /// The event every later request renders against, until the next `context`.
    Context {
        payload: &'a serde_json::Value,
        repo: &'a str,
    },
    IsTrue {
        source: &'a str,
        command: Option<&'a Command>,
    },
    Render {
        prompt: bool,
        source: &'a str,
        command: Option<&'a Command>,
    },
}

/// A request, as a helper reads it.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Incoming {
    Begin,
    Context {
        payload: serde_json::Value,
        repo: String,
    },
    IsTrue {
        source: String,
        command: Option<Command>,
    },
    Render {
        prompt: bool,
        source: String,
        command: Option<Command>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Done,
    Bool(bool),
    Text(String),
    /// Why the template failed, and the line of the template it failed on.
    Error {
        message: String,
        line: usize,
    },
}

/// The helpers of this process, once the service has said where its binary is ([`install`]).
pub struct Pool {
    exe: PathBuf,
    idle: Mutex<Vec<Helper>>,
    /// Helpers alive (in use or idle); a helper's end lowers it and rings `freed`.
    alive: Mutex<usize>,
    freed: Condvar,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Renders repository templates in helpers started from `exe` from now on (`nightshift serve` calls it
/// with `/proc/self/exe`). Without it (the local CLI, unit tests) they render in the calling thread.
pub fn install(exe: PathBuf) {
    let _ = POOL.set(Pool {
        exe,
        idle: Mutex::new(Vec::new()),
        alive: Mutex::new(0),
        freed: Condvar::new(),
    });
}

/// Starts [`READY_HELPERS`] on a thread of their own, when helpers are installed: a helper takes about
/// 0.1 s of CPU to start (the patterns that strip hidden text), which the first events would otherwise
/// wait for.
pub fn prewarm() {
    let Some(pool) = pool() else { return };
    let _ = std::thread::Builder::new()
        .name("render-helpers".into())
        .spawn(move || {
            let mut ready = Vec::new();
            for _ in 0..READY_HELPERS {
                let Ok((mut helper, _)) = pool.take() else {
                    break;
                };
                if matches!(exchange(&mut helper, &Request::Begin), Ok(Answer::Done)) {
                    ready.push(helper);
                }
            }
            for helper in ready {
                pool.give_back(helper);
            }
        });
}

/// The helpers, when [`install`]ed.
pub fn pool() -> Option<&'static Pool> {
    POOL.get()
}

/// A running helper.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pool: &'static Pool,
    /// It was sent an event larger than [`LARGE_EVENT`].
    large: bool,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut alive = lock(&self.pool.alive);
        *alive = alive.saturating_sub(1);
        self.pool.freed.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A helper: one waiting (that has not died meanwhile), or a new one when fewer than [`MAX_HELPERS`]
    /// are alive, or the first to come free within [`WALL`]. Whether it was waiting in the pool.
    fn take(&'static self) -> io::Result<(Helper, bool)> {
        let deadline = Instant::now() + WALL;
        let mut alive = lock(&self.alive);
        loop {
            let waiting = lock(&self.idle).pop();
            if let Some(mut helper) = waiting {
                if matches!(helper.child.try_wait(), Ok(None)) {
                    return Ok((helper, true));
                }
                // Dead while it waited: its end takes the count's lock.
                drop(alive);
                drop(helper);
                alive = lock(&self.alive);
                continue;
            }
            if *alive < MAX_HELPERS {
                *alive += 1;
                drop(alive);
                return self.spawn().map(|h| (h, false)).inspect_err(|_| {
                    *lock(&self.alive) -= 1;
                    self.freed.notify_all();
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::other(format!(
                    "all {MAX_HELPERS} template renderers stayed busy for {}s",
                    WALL.as_secs()
                )));
            }
            alive = self
                .freed
                .wait_timeout(alive, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Starts a helper (counted by the caller).
    fn spawn(&'static self) -> io::Result<Helper> {
        let mut child = std::process::Command::new(&self.exe)
            .arg(SUBCOMMAND)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the helper's pipes were not made"));
        };
        Ok(Helper {
            child,
            stdin,
            stdout,
            pool: self,
            large: false,
        })
    }

    /// Keeps `helper` for the next session, unless enough wait already or it holds a large event (it is
    /// ended, outside the locks).
    fn give_back(&self, helper: Helper) {
        let surplus = {
            let mut idle = lock(&self.idle);
            if idle.len() < IDLE_HELPERS && !helper.large {
                idle.push(helper);
                None
            } else {
                Some(helper)
            }
        };
        drop(surplus);
        // Under the count's lock, so a render waiting for a helper cannot miss it.
        let _alive = lock(&self.alive);
        self.freed.notify_all();
    }
}

/// The checks of one repository's trigger files against the sample payloads, all in one session: one CPU
/// budget for every file of the repository.
pub struct Checks {
    pool: &'static Pool,
    session: Option<Session<'static>>,
}

impl Checks {
    /// When the service has helpers ([`install`]).
    pub fn new() -> Option<Checks> {
        pool().map(|pool| Checks {
            pool,
            session: None,
        })
    }

    /// The session, rendering against `payload` (a sample's) from now on.
    pub fn against(
        &mut self,
        payload: &'static serde_json::Value,
        repo: String,
    ) -> &mut Session<'static> {
        match &mut self.session {
            Some(session) => session.switch(payload, repo),
            None => self.session = Some(Session::new(self.pool, payload, repo)),
        }
        self.session.as_mut().expect("set above")
    }

    /// Why the session's helper stopped, once it did.
    pub fn stopped(&self) -> Option<&str> {
        self.session.as_ref().and_then(Session::stopped)
    }

    /// Why no helper could be had for a check (none could be started, or all stayed busy): the check says
    /// nothing of the files then.
    pub fn unavailable(&self) -> Option<&str> {
        self.session.as_ref().and_then(|s| s.unavailable.as_deref())
    }
}

/// One event's renders in a helper: the event is sent once, with the first render.
pub struct Session<'e> {
    pool: &'static Pool,
    payload: &'e serde_json::Value,
    repo: String,
    /// The helper, once one was taken.
    helper: Option<Helper>,
    /// Whether the helper holds this event (`payload`, `repo`).
    sent: bool,
    /// Why the session's helper stopped, once it did: every later request fails with it (a new helper
    /// would be a new budget).
    spent: Option<String>,
    /// Why no helper could be had, when that happened.
    unavailable: Option<String>,
}

impl<'e> Session<'e> {
    pub fn new(pool: &'static Pool, payload: &'e serde_json::Value, repo: String) -> Session<'e> {
        Session {
            pool,
            payload,
            repo,
            helper: None,
            sent: false,
            spent: None,
            unavailable: None,
        }
    }

    /// Why the session's helper stopped (its CPU budget spent, a crash), once it did.
    pub fn stopped(&self) -> Option<&str> {
        self.spent.as_deref()
    }

    /// Renders against another event from now on, in the same helper.
    pub fn switch(&mut self, payload: &'e serde_json::Value, repo: String) {
        (self.payload, self.repo, self.sent) = (payload, repo, false);
    }

    /// Evaluates an `if:` expression, as [`template::is_true`] does.
    pub fn is_true(&mut self, source: &str, command: Option<&Command>) -> Result<bool, String> {
        match self.call(&Request::IsTrue { source, command }) {
            Ok(Answer::Bool(b)) => Ok(b),
            Ok(Answer::Error { message, .. }) => Err(message),
            Ok(_) => Err(self.lost("answered out of turn")),
            Err(e) => Err(e),
        }
    }

    /// Renders a template, as [`template::render`] does (`prompt`: with the prompt environment).
    pub fn render(
        &mut self,
        prompt: bool,
        source: &str,
        command: Option<&Command>,
    ) -> Result<String, String> {
        self.render_at(prompt, source, command).map_err(|(_, e)| e)
    }

    /// [`render`](Self::render), with the line of the template an error is on (as
    /// [`template::render_at`]; 1 when the renderer itself failed).
    pub fn render_at(
        &mut self,
        prompt: bool,
        source: &str,
        command: Option<&Command>,
    ) -> Result<String, (usize, String)> {
        match self.call(&Request::Render {
            prompt,
            source,
            command,
        }) {
            Ok(Answer::Text(t)) => Ok(t),
            Ok(Answer::Error { message, line }) => Err((line, message)),
            Ok(_) => Err((1, self.lost("answered out of turn"))),
            Err(e) => Err((1, e)),
        }
    }

    /// The helper is dropped (killed) and the error says why, for every later request too.
    fn lost(&mut self, why: &str) -> String {
        self.helper = None;
        let why = format!("the template renderer {why}");
        self.spent = Some(why.clone());
        why
    }

    fn call(&mut self, request: &Request<'_>) -> Result<Answer, String> {
        // Once stopped, or once no helper could be had (a new wait for each render would hold the
        // thread for minutes), every request fails at once.
        if let Some(why) = self.spent.as_ref().or(self.unavailable.as_ref()) {
            return Err(why.clone());
        }
        let mut helper = match self.helper.take() {
            Some(helper) => helper,
            None => self.begin()?,
        };
        if !self.sent {
            let context = Request::Context {
                payload: self.payload,
                repo: &self.repo,
            };
            match exchange(&mut helper, &context) {
                Ok(Answer::Done) => self.sent = true,
                // An event the helper cannot read: none of this session's renders can be done.
                Ok(Answer::Error { message, .. }) => {
                    self.spent = Some(message.clone());
                    return Err(message);
                }
                Ok(_) => return Err(self.lost("answered out of turn")),
                Err(e) => return Err(self.spend(helper, e)),
            }
        }
        match exchange(&mut helper, request) {
            Ok(answer) => {
                self.helper = Some(helper);
                Ok(answer)
            }
            Err(e) => Err(self.spend(helper, e)),
        }
    }

    /// A helper for this session, its CPU budget started. One that died while it waited in the pool is
    /// replaced by a new one; a new one that fails to begin ends the session.
    fn begin(&mut self) -> Result<Helper, String> {
        loop {
            let (mut helper, pooled) = self.pool.take().map_err(|e| {
                let why = format!("the template renderer could not be started: {e}");
                self.unavailable = Some(why.clone());
                why
            })?;
            match exchange(&mut helper, &Request::Begin) {
                Ok(Answer::Done) => {
                    self.sent = false;
                    return Ok(helper);
                }
                Ok(_) => return Err(self.lost("answered out of turn")),
                Err(_) if pooled => continue,
                Err(e) => return Err(self.spend(helper, e)),
            }
        }
    }

    /// The helper stopped answering: why, for this request and every later one of the session.
    fn spend(&mut self, helper: Helper, error: io::Error) -> String {
        let why = stopped(helper, error);
        self.spent = Some(why.clone());
        why
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(helper) = self.helper.take() {
            self.pool.give_back(helper);
        }
    }
}

/// Why `helper` stopped answering, once it is gone: the limit it ran into when the kernel killed it.
fn stopped(mut helper: Helper, error: io::Error) -> String {
    let timed_out = error.kind() == io::ErrorKind::TimedOut;
    let _ = helper.child.kill();
    let status = helper.child.wait().ok();
    describe_end(status, timed_out, &error)
}

fn describe_end(status: Option<ExitStatus>, timed_out: bool, error: &io::Error) -> String {
    use std::os::unix::process::ExitStatusExt;
    if timed_out {
        return format!(
            "the template did not finish within {}s and was stopped",
            WALL.as_secs()
        );
    }
    match status.and_then(|s| s.signal()) {
        Some(libc::SIGXCPU) => format!(
            "the templates used more than {CPU_SECONDS}s of CPU between them and were stopped (a \
             repository's templates render in a process of their own, with limits)"
        ),
        Some(libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS) => "the template crashed its renderer \
             (out of memory or out of stack) and was stopped (a repository's templates render in a \
             process of their own, with limits)"
            .to_owned(),
        Some(signal) => format!("the template renderer was killed (signal {signal})"),
        None => format!("the template renderer stopped: {error}"),
    }
}

/// Sends `request` to `helper` and reads its answer, within [`WALL`].
fn exchange(helper: &mut Helper, request: &Request<'_>) -> io::Result<Answer> {
    let body = serde_json::to_vec(request).map_err(io::Error::other)?;
    helper.large |= body.len() > LARGE_EVENT;
    write_frame(&mut helper.stdin, &body)?;
    let deadline = Instant::now() + WALL;
    let mut length = [0u8; 4];
    read_exact_by(&mut helper.stdout, &mut length, deadline)?;
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(io::Error::other(
            "an answer larger than any template renders",
        ));
    }
    let mut answer = vec![0u8; length];
    read_exact_by(&mut helper.stdout, &mut answer, deadline)?;
    serde_json::from_slice(&answer).map_err(io::Error::other)
}

fn write_frame(out: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let length = u32::try_from(body.len())
        .ok()
        .filter(|&l| l as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::other("a frame too large to send"))?;
    out.write_all(&length.to_le_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// Fills `buf` from the helper's stdout, or fails with `TimedOut` at `deadline`.
fn read_exact_by(from: &mut ChildStdout, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
        }
        let mut ready = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, for the duration of the call.
        let polled = unsafe { libc::poll(&mut ready, 1, wait) };
        if polled < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if polled == 0 {
            continue;
        }
        match from.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `nightshift render-helper`: serves requests on stdin until it closes.
pub fn helper_main() -> ExitCode {
    // Behind the service's own work when the CPU is short; not readable or writable through /proc by
    // other processes of the service's user (an agent run without a box could otherwise answer for it).
    // SAFETY: setpriority and prctl read the integers they are given.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    // What every prompt's first render would build, built before any budget starts.
    template::warm_up();
    let mut budget = match limit_self()
        .and_then(|()| Budget::start(CPU_SECONDS))
        .and_then(|budget| refuse_what_a_renderer_never_does().map(|()| budget))
    {
        Ok(budget) => budget,
        Err(e) => {
            eprintln!("nightshift render-helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = template::environment();
    let prompt_env = template::prompt_environment();
    let mut context = None;
    let (mut input, mut output) = (io::stdin().lock(), io::stdout().lock());
    loop {
        let frame = match read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nightshift render-helper: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Reading the request (an event's payload: up to 25 MB of JSON, linear work) is not the
        // templates' to pay for: its CPU is added to the limit.
        let incoming = match budget.excuse(|| serde_json::from_slice::<Incoming>(&frame)) {
            Ok(incoming) => incoming,
            Err(e) => {
                eprintln!("nightshift render-helper: {e}");
                return ExitCode::FAILURE;
            }
        };
        drop(frame);
        let answer = match incoming {
            Err(e) => failed(format!("a request the renderer cannot read: {e}")),
            Ok(Incoming::Begin) => {
                // The last session's event goes before the new budget starts.
                context = None;
                match Budget::start(CPU_SECONDS) {
                    Ok(new) => budget = new,
                    Err(e) => {
                        eprintln!("nightshift render-helper: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                Answer::Done
            }
            Ok(Incoming::Context { payload, repo }) => {
                context = Some(template::context_of(std::sync::Arc::new(payload), repo));
                Answer::Done
            }
            Ok(Incoming::IsTrue { source, command }) => match &context {
                None => failed("no event to render against".into()),
                Some(ctx) => {
                    let ctx = with(ctx, command.as_ref());
                    match template::is_true(&env, &source, &ctx) {
                        Ok(b) => Answer::Bool(b),
                        Err(e) => failed(e),
                    }
                }
            },
            Ok(Incoming::Render {
                prompt,
                source,
                command,
            }) => match &context {
                None => failed("no event to render against".into()),
                Some(ctx) => {
                    let ctx = with(ctx, command.as_ref());
                    let env = if prompt { &prompt_env } else { &env };
                    match template::render_at(env, &source, &ctx) {
                        Ok(t) => Answer::Text(t),
                        Err((line, message)) => Answer::Error { message, line },
                    }
                }
            },
        };
        let sent = serde_json::to_vec(&answer)
            .map_err(io::Error::other)
            .and_then(|body| write_frame(&mut output, &body));
        if sent.is_err() {
            return ExitCode::FAILURE;
        }
    }
}

fn failed(message: String) -> Answer {
    Answer::Error { message, line: 1 }
}

fn with(ctx: &minijinja::Value, command: Option<&Command>) -> minijinja::Value {
    match command {
        Some(cmd) => template::with_command(ctx, cmd),
        None => ctx.clone(),
    }
}

/// A frame from `input`; `None` at its end before a frame begins.
fn read_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(io::Error::other("a request larger than any event"));
    }
    let mut frame = vec![0u8; length];
    input.read_exact(&mut frame)?;
    Ok(Some(frame))
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a valid rlimit, read during the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The limits a helper holds for its whole life: memory, no core files (the kernel's SIGXCPU would write
/// one), a few file descriptors.
fn limit_self() -> io::Result<()> {
    set_limit(libc::RLIMIT_CORE, 0, 0)?;
    set_limit(libc::RLIMIT_AS, ADDRESS_SPACE, ADDRESS_SPACE)?;
    set_limit(libc::RLIMIT_NOFILE, 16, 16)
}

/// Once a helper has limited itself, it may make only the system calls a renderer makes (read from its
/// pipe, write to it, get and free memory, read and set its own CPU limit and usage, and end), each other
/// one failing with `EPERM` (a seccomp filter; the helper is no-new-privileges): a template turned into
/// code by a bug of the engine's reaches nothing beyond its pipes. An allowlist, not a list of what harm
/// needs: the kernel has many ways to a file or to another process (signals queued or sent through a
/// descriptor's owner, another process's rlimits, priority or CPUs, a file's ACL), it keeps adding calls,
/// and on x86_64 every call has a second (x32) number. The set was read from the real helper's calls
/// under `strace` through the suites that render repository templates.
fn refuse_what_a_renderer_never_does() -> io::Result<()> {
    let filter = renderer_filter(std::process::id()).map_err(io::Error::other)?;
    crate::sandbox::apply_syscall_filters(&[filter])
}

fn renderer_filter(pid: u32) -> anyhow::Result<seccompiler::BpfProgram> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let always = |call: i64| (call, Vec::new());
    // A call whose first argument (a process) is 0 (itself) or its own pid.
    let on_itself = |call: i64| -> anyhow::Result<(i64, Vec<SeccompRule>)> {
        let first_is = |value: u64| -> anyhow::Result<SeccompRule> {
            Ok(SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                value,
            )?])?)
        };
        Ok((call, vec![first_is(0)?, first_is(u64::from(pid))?]))
    };
    let mut calls: Vec<_> = [
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_getrandom,
        libc::SYS_getrusage,
        libc::SYS_getrlimit,
        libc::SYS_setrlimit,
        libc::SYS_clock_gettime,
        libc::SYS_sched_yield,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_sigaltstack,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]
    .into_iter()
    .map(always)
    .collect();
    calls.push(on_itself(libc::SYS_prlimit64)?);
    // `abort` raises its signal with tgkill(2), to itself.
    calls.push(on_itself(libc::SYS_tgkill)?);
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("no seccomp filter for this machine: {e}"))?;
    SeccompFilter::new(
        calls.into_iter().collect(),
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?
    .try_into()
    .map_err(|e| anyhow::anyhow!("compiling the render helper's seccomp filter: {e}"))
}

/// The CPU this process has used, in seconds.
fn cpu_used() -> io::Result<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: a zeroed rusage the call fills.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled by the call above (and zeroed before it).
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The CPU limit as it is: (soft, hard).
fn cpu_limit() -> io::Result<(u64, u64)> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit the call fills.
    if unsafe { libc::getrlimit(libc::RLIMIT_CPU, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((current.rlim_cur, current.rlim_max))
}

/// A session's CPU: the process's CPU time at which it ends. The kernel sends SIGXCPU (which ends the
/// process) once the whole seconds used reach the soft limit, the end rounded up: a session gets its
/// seconds, and less than one more.
struct Budget {
    end: f64,
}

impl Budget {
    /// `seconds` from now. The hard limit is left as it is, so the next session can be given its own.
    fn start(seconds: u64) -> io::Result<Budget> {
        let budget = Budget {
            end: cpu_used()? + seconds as f64,
        };
        budget.apply(0)?;
        Ok(budget)
    }

    /// Sets the soft limit at the end, plus `more` seconds.
    fn apply(&self, more: u64) -> io::Result<()> {
        let (_, hard) = cpu_limit()?;
        let soft = (self.end.max(0.0).ceil() as u64)
            .saturating_add(more)
            .min(hard);
        set_limit(libc::RLIMIT_CPU, soft, hard)
    }

    /// Runs `work` with the CPU it uses added to the budget (it may use up to [`EXCUSED_SECONDS`]).
    fn excuse<T>(&mut self, work: impl FnOnce() -> T) -> io::Result<T> {
        self.apply(EXCUSED_SECONDS)?;
        let before = cpu_used()?;
        let done = work();
        self.end += (cpu_used()? - before).max(0.0);
        self.apply(0)?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn under_its_filter_a_helper_opens_no_file_socket_or_program_and_signals_only_itself() {
        // In a child of this test's process (the filter is for life), so that what it refuses is seen.
        // SAFETY: the child makes system calls and allocates (glibc makes malloc usable in a forked child)
        // and ends with `_exit`, never returning into the test harness.
        let parent = std::process::id();
        let mut fds = [0; 2];
        // SAFETY: a pipe into an array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let child_pid = unsafe { libc::fork() };
        assert!(child_pid >= 0);
        if child_pid == 0 {
            let code = (|| -> i32 {
                // SAFETY: getpid has no preconditions.
                let me = unsafe { libc::getpid() } as u32;
                let Ok(filter) = super::renderer_filter(me) else {
                    return 10;
                };
                if crate::sandbox::apply_syscall_filters(&[filter]).is_err() {
                    return 11;
                }
                let refused = |result: i64| {
                    result == -1
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
                };
                let cpu = libc::rlimit {
                    rlim_cur: 1,
                    rlim_max: 1,
                };
                // SAFETY: plain system calls on constant arguments (the parent's limits and signals
                // are what the filter must refuse).
                unsafe {
                    let checks = [
                        libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64,
                        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
                        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, [0; 2].as_mut_ptr())
                            as i64,
                        libc::kill(parent as i32, 0) as i64,
                        libc::syscall(libc::SYS_tgkill, parent, parent, 0),
                        libc::syscall(libc::SYS_rt_sigqueueinfo, parent, 0, std::ptr::null::<u8>()),
                        libc::prlimit(parent as i32, libc::RLIMIT_CPU, &cpu, std::ptr::null_mut())
                            as i64,
                        libc::fcntl(fds[1], libc::F_SETOWN, parent as i32) as i64,
                        libc::setpriority(libc::PRIO_PROCESS, parent, 19) as i64,
                        libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, c"/tmp".as_ptr(), 0o777),
                        libc::syscall(
                            libc::SYS_openat | 0x4000_0000,
                            libc::AT_FDCWD,
                            c"/etc/hostname".as_ptr(),
                            0,
                        ),
                    ];
                    if let Some(i) = checks.iter().position(|r| !refused(*r)) {
                        return 20 + i as i32;
                    }
                    // Its own signals, limits, memory and pipe still work.
                    if libc::syscall(libc::SYS_tgkill, me, me, 0) != 0 {
                        return 12;
                    }
                    let own = libc::rlimit {
                        rlim_cur: 100,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::prlimit(0, libc::RLIMIT_CPU, &own, std::ptr::null_mut()) != 0 {
                        return 13;
                    }
                    let memory = vec![7u8; 8 << 20];
                    if memory.iter().map(|b| *b as u64).sum::<u64>() != 7 * (8 << 20) {
                        return 14;
                    }
                    if libc::write(fds[1], b"x".as_ptr().cast(), 1) != 1 {
                        return 15;
                    }
                }
                0
            })();
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(
            unsafe { libc::waitpid(child_pid, &mut status, 0) },
            child_pid
        );
        assert!(libc::WIFEXITED(status), "{status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the check that failed");
    }

    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_frame_is_read_whole_and_the_end_of_input_is_not_an_error() {
        let mut sent = Vec::new();
        write_frame(&mut sent, b"{\"op\":\"begin\"}").unwrap();
        write_frame(&mut sent, b"").unwrap();
        let mut input = &sent[..];
        assert_eq!(
            read_frame(&mut input).unwrap().unwrap(),
            b"{\"op\":\"begin\"}"
        );
        assert_eq!(read_frame(&mut input).unwrap().unwrap(), b"");
        assert!(read_frame(&mut input).unwrap().is_none());
        // A frame cut short is an error, not a short request.
        let mut cut = &sent[..6];
        assert!(read_frame(&mut cut).is_err());
    }

    #[test]
    fn a_frame_larger_than_any_event_is_refused_before_it_is_allocated() {
        let mut huge = &(u32::MAX).to_le_bytes()[..];
        let e = read_frame(&mut huge).unwrap_err();
        assert!(e.to_string().contains("larger than any event"), "{e}");
        assert!(write_frame(&mut Vec::new(), &vec![0; MAX_FRAME + 1]).is_err());
    }

    #[test]
    fn a_stopped_helper_is_explained_by_the_limit_it_ran_into() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        let killed = |signal| Some(ExitStatus::from_raw(signal));
        let cpu = describe_end(killed(libc::SIGXCPU), false, &eof);
        assert!(cpu.contains("more than 2s of CPU"), "{cpu}");
        let stack = describe_end(killed(libc::SIGSEGV), false, &eof);
        assert!(stack.contains("out of memory or out of stack"), "{stack}");
        let wall = describe_end(None, true, &io::Error::from(io::ErrorKind::TimedOut));
        assert!(wall.contains("within 15s"), "{wall}");
    }

    #[test]
    fn requests_and_answers_keep_their_wire_names() {
        let payload = serde_json::json!({"a": 1});
        let command = Command {
            name: "/fix".into(),
            args: "now".into(),
        };
        let sent = serde_json::to_string(&Request::Render {
            prompt: true,
            source: "{{ a }}",
            command: Some(&command),
        })
        .unwrap();
        match serde_json::from_str::<Incoming>(&sent).unwrap() {
            Incoming::Render {
                prompt,
                source,
                command: Some(c),
            } => assert!(prompt && source == "{{ a }}" && c == command),
            _ => panic!("{sent}"),
        }
        let context = serde_json::to_string(&Request::Context {
            payload: &payload,
            repo: "o/r",
        })
        .unwrap();
        assert!(matches!(
            serde_json::from_str::<Incoming>(&context).unwrap(),
            Incoming::Context { repo, payload: p } if repo == "o/r" && p == payload
        ));
    }
}
