//! Running the `git` CLI, hardened: every git command nightshift runs goes through [`Git`], which never
//! lets a repository, a worktree or the service's environment decide what git executes.
//!
//! - The environment is cleared: git sees `PATH`, an empty `HOME` of nightshift's own, no system or
//!   global config, no terminal prompt and no askpass (plus the operator's proxy and CA settings, if any).
//! - Command-line config (which outranks the repository's) turns off everything that runs a program:
//!   hooks, fsmonitor, pagers, editors, credential helpers, signing programs, ssh, external diffs.
//! - Remotes are `https://` URLs or local paths under the configured `git.file_roots`; every other
//!   transport is refused by git itself (`protocol.allow=never`), and positional URLs and revisions come
//!   after `--end-of-options`.
//! - Every call has a time limit (and HTTP transfers a low-speed limit): a hung remote cannot hold a
//!   repository's lock forever. On time-out the whole process group (git and its helpers) is killed.
//! - git never runs in a folder an agent controls: the working directory is nightshift's own, and the git
//!   dir is always given explicitly (`--git-dir`), so no `.git` file is ever discovered or followed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// What the operator lets nightshift's git do (`git:` in the service config).
#[derive(Clone, Debug)]
pub struct GitPolicy {
    /// Folders under which a local path (or `file://` URL) may be a remote; canonical paths. Empty: only
    /// `https://` remotes.
    pub file_roots: Vec<PathBuf>,
    /// Hosts that may be reached over plain `http://` (a git server on the same machine, tests). Empty:
    /// none.
    pub http_hosts: Vec<String>,
    /// The longest any one git command may take.
    pub timeout: Duration,
}

impl Default for GitPolicy {
    fn default() -> GitPolicy {
        GitPolicy {
            file_roots: Vec::new(),
            http_hosts: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Config given on git's command line: it outranks every config file, so nothing a repository's config
/// says about these can take effect. Each one names a setting that would make git run a program (or
/// read files of the service's user); values are either off or programs that do nothing. Automatic
/// housekeeping (gc) stays on but runs in the foreground, inside the time limit and the process group.
pub const HARDENING: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.pager=cat",
    "core.editor=false",
    "sequence.editor=false",
    "core.askPass=",
    "credential.helper=",
    "core.sshCommand=false",
    "ssh.variant=ssh",
    "core.gitProxy=",
    "core.alternateRefsCommand=true",
    "core.attributesFile=/dev/null",
    "core.symlinks=true",
    "diff.external=",
    "gpg.program=false",
    "gpg.ssh.program=false",
    "gpg.x509.program=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "push.gpgSign=false",
    "log.showSignature=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "push.recurseSubmodules=no",
    "protocol.allow=never",
    "protocol.https.allow=always",
    "gc.autoDetach=false",
    "maintenance.autoDetach=false",
];

/// Environment variables passed through to git when the service has them: where to find a proxy and CA
/// certificates. Everything else of the service's environment (its secrets) stays behind.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
];

/// Which repository a git command works on. Always explicit: git never looks for a `.git` itself.
#[derive(Clone, Copy)]
pub enum Repo<'a> {
    /// No repository (`clone`).
    None,
    /// A git dir (a bare mirror, or a worktree's git dir in it) without a work tree.
    Bare(&'a Path),
    /// A git dir and a work tree.
    Work {
        git_dir: &'a Path,
        work_tree: &'a Path,
    },
}

/// The one way nightshift runs git.
#[derive(Clone, Debug)]
pub struct Git {
    policy: GitPolicy,
    /// An empty folder of nightshift's own, git's `HOME` and working directory.
    home: PathBuf,
}

/// One git command, built with [`Git::cmd`].
pub struct GitCmd<'a> {
    git: &'a Git,
    repo: Repo<'a>,
    config: Vec<String>,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    auth: Option<&'a GitAuth>,
    stdin: Option<Vec<u8>>,
    max_output: usize,
}

/// What a git command may print unless its caller says otherwise ([`GitCmd::max_output`]): every output is
/// bounded, as some list what a repository or an agent made.
const MAX_OUTPUT: usize = 256 << 20;

/// What git may print on its standard error that is kept (for the error message); the rest is read and
/// dropped.
const MAX_STDERR: u64 = 64 << 10;

/// A git command printed more than its caller reads ([`GitCmd::max_output`]); it was stopped.
#[derive(Debug)]
pub struct OutputTooLarge {
    pub limit: usize,
}

impl std::fmt::Display for OutputTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "git printed more than {} bytes and was stopped",
            self.limit
        )
    }
}

impl std::error::Error for OutputTooLarge {}

impl Git {
    /// `home` is created if missing; it must be a folder only nightshift writes.
    pub fn new(policy: GitPolicy, home: PathBuf) -> Git {
        Git { policy, home }
    }

    pub fn policy(&self) -> &GitPolicy {
        &self.policy
    }

    pub fn cmd<'a>(&'a self, repo: Repo<'a>) -> GitCmd<'a> {
        GitCmd {
            git: self,
            repo,
            config: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            auth: None,
            stdin: None,
            max_output: MAX_OUTPUT,
        }
    }

    /// The remote git may talk to for `url`: an `https://` URL as it is, or the canonical path of a local
    /// repository under one of the file roots. Anything else (ssh, `ext::`, `git://`, options, paths
    /// elsewhere) is refused.
    pub fn remote(&self, url: &str) -> Result<String> {
        if url.is_empty() || url.chars().any(|c| c.is_control() || c == ' ') {
            bail!("the repository URL `{}` is not valid", url.escape_debug());
        }
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Ok(url.to_owned());
        }
        if let Some(rest) = lower.strip_prefix("http://") {
            let authority = rest.split('/').next().unwrap_or_default();
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _port)| host);
            if !authority.contains('@') && self.policy.http_hosts.iter().any(|h| h == host) {
                return Ok(url.to_owned());
            }
            bail!(
                "the repository URL `{url}` is plain http; nightshift's git uses https (plain http only to \
                 the hosts in git.http_hosts)"
            );
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if !path.starts_with('/') {
            bail!(
                "the repository URL `{url}` is not an https:// URL; nightshift's git talks to GitHub over \
                 https only (local paths only under git.file_roots)"
            );
        }
        let canonical = std::fs::canonicalize(path)
            .with_context(|| format!("the local repository `{path}` cannot be read"))?;
        if !self
            .policy
            .file_roots
            .iter()
            .any(|root| canonical.starts_with(root))
        {
            bail!(
                "the local repository `{path}` is not under any of git.file_roots in the service config \
                 (local remotes are refused unless the operator allows their folder)"
            );
        }
        canonical
            .to_str()
            .map(str::to_owned)
            .with_context(|| format!("{} is not valid UTF-8", canonical.display()))
    }
}

impl<'a> GitCmd<'a> {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One more `-c key=value` (after nightshift's own, so it may not loosen them: callers set
    /// identities and file paths).
    pub fn config(mut self, setting: impl Into<String>) -> Self {
        self.config.push(setting.into());
        self
    }

    /// A private index file instead of the git dir's own.
    pub fn index(mut self, path: &Path) -> Self {
        self.env
            .push(("GIT_INDEX_FILE", path.to_string_lossy().into_owned()));
        self
    }

    /// Git objects written to `dir` (a quarantine: `GIT_OBJECT_DIRECTORY`), read from there and from
    /// `alternates` (`GIT_ALTERNATE_OBJECT_DIRECTORIES`); no path may hold `:` or `"`, which that variable
    /// would read as separators or quoting.
    pub fn objects(mut self, dir: &Path, alternates: &[&Path]) -> Result<Self> {
        let text = |path: &Path| -> Result<String> {
            let text = path
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            if text.contains([':', '"']) {
                bail!("{text} holds a `:` or `\"`, which git's object paths cannot");
            }
            Ok(text.to_owned())
        };
        let alternates = alternates
            .iter()
            .map(|p| text(p))
            .collect::<Result<Vec<_>>>()?
            .join(":");
        self.env.push(("GIT_OBJECT_DIRECTORY", text(dir)?));
        self.env
            .push(("GIT_ALTERNATE_OBJECT_DIRECTORIES", alternates));
        Ok(self)
    }

    pub fn auth(mut self, auth: &'a GitAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    pub fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }

    /// At most `bytes` of standard output are read: past them git is stopped and the command fails with
    /// [`OutputTooLarge`] (its output may be the size of what an agent wrote).
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// Runs the command, returning stdout as text.
    pub async fn run(self) -> Result<String> {
        let out = self.output().await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs the command, returning stdout as bytes. A failure says what git said.
    pub async fn output(self) -> Result<Vec<u8>> {
        let git = self.git;
        tokio::fs::create_dir_all(&git.home)
            .await
            .with_context(|| format!("creating {}", git.home.display()))?;
        let mut cmd = Command::new("git");
        cmd.env_clear();
        for name in PASSED_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.env("HOME", &git.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
            .env("GIT_HTTP_LOW_SPEED_TIME", "60")
            .current_dir(&git.home);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(header) = self.auth.and_then(|a| a.header.as_ref()) {
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", header);
        }
        cmd.arg("--no-pager").arg("--literal-pathspecs");
        match self.repo {
            Repo::None => {}
            Repo::Bare(dir) => {
                cmd.arg(format!("--git-dir={}", dir.display()));
            }
            Repo::Work { git_dir, work_tree } => {
                cmd.arg(format!("--git-dir={}", git_dir.display()))
                    .arg(format!("--work-tree={}", work_tree.display()));
            }
        }
        for setting in HARDENING {
            cmd.arg("-c").arg(setting);
        }
        let file = if git.policy.file_roots.is_empty() {
            "protocol.file.allow=never"
        } else {
            "protocol.file.allow=always"
        };
        let http = if git.policy.http_hosts.is_empty() {
            "protocol.http.allow=never"
        } else {
            "protocol.http.allow=always"
        };
        cmd.arg("-c").arg(file).arg("-c").arg(http);
        if !self
            .config
            .iter()
            .any(|c| c.starts_with("core.excludesFile="))
        {
            cmd.arg("-c").arg("core.excludesFile=/dev/null");
        }
        for setting in &self.config {
            cmd.arg("-c").arg(setting);
        }
        cmd.args(&self.args)
            .stdin(if self.stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let shown = self.args.join(" ");
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => bail!("cannot run git: {e} (is git installed and on PATH?)"),
        };
        let pid = child.id();
        if let (Some(input), Some(mut stdin)) = (self.stdin, child.stdin.take()) {
            tokio::spawn(async move {
                let _ = stdin.write_all(&input).await;
            });
        }
        let kill_group = || {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on the process group git leads; no memory is involved.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        };
        let max = self.max_output;
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            bail!("running `git {shown}` failed: its output is not piped");
        };
        // Standard output up to one byte past the bound (so that going past it is seen), the start of
        // standard error (the rest read and dropped, so that git never blocks on it).
        // (Standard error on a task of its own: it ends when git does, which git would not while its
        // standard output, past the bound, is no longer read.)
        let err = tokio::spawn(async move {
            let mut err = Vec::new();
            (&mut stderr).take(MAX_STDERR).read_to_end(&mut err).await?;
            tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await?;
            Ok::<_, std::io::Error>(err)
        });
        let read = async {
            let mut out = Vec::new();
            (&mut stdout)
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .await?;
            if out.len() > max {
                return Ok(None);
            }
            let err = err.await.map_err(std::io::Error::other)??;
            Ok::<_, std::io::Error>(Some((child.wait().await?, out, err)))
        };
        let (status, out, err) = match tokio::time::timeout(git.policy.timeout, read).await {
            Ok(Ok(Some(output))) => output,
            Ok(Ok(None)) => {
                kill_group();
                return Err(anyhow::Error::new(OutputTooLarge { limit: max })
                    .context(format!("`git {shown}` printed too much")));
            }
            Ok(Err(e)) => bail!("running `git {shown}` failed: {e}"),
            Err(_) => {
                kill_group();
                bail!(
                    "`git {shown}` took longer than {} and was stopped",
                    humantime::format_duration(git.policy.timeout)
                );
            }
        };
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err);
            bail!("`git {shown}` failed ({status}): {}", stderr.trim());
        }
        Ok(out)
    }
}

/// One path a commit changes, against the commit's parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangedPath {
    /// The path in the repository (bytes git cannot show as UTF-8 become U+FFFD).
    pub path: String,
    /// Lines added and removed; both 0 for a binary file.
    pub added: u64,
    pub removed: u64,
    pub binary: bool,
    /// git's file modes before and after (`0o100644`, `0o100755`, `0o120000` for a symlink, `0o160000`
    /// for a submodule); 0 where the path did not exist.
    pub old_mode: u32,
    pub new_mode: u32,
    /// The lines the commit adds, with their line numbers in the new file (a symlink's one line is its
    /// target; a binary file's are its bytes split at newlines, not valid UTF-8 made U+FFFD).
    pub added_lines: Vec<(u64, String)>,
}

pub const MODE_SYMLINK: u32 = 0o120000;
pub const MODE_SUBMODULE: u32 = 0o160000;

impl ChangedPath {
    /// The path is a symlink after the commit.
    pub fn is_symlink(&self) -> bool {
        self.new_mode == MODE_SYMLINK
    }

    /// The path is an executable file after the commit.
    pub fn is_executable(&self) -> bool {
        self.new_mode & 0o170000 == 0o100000 && self.new_mode & 0o111 != 0
    }

    /// Where a symlink the commit makes points, as written.
    pub fn link_target(&self) -> Option<&str> {
        self.is_symlink()
            .then(|| self.added_lines.first().map(|(_, t)| t.as_str()))
            .flatten()
    }
}

/// What a commit changes: every path, as `git diff-tree` against its first parent reports it (renames as
/// a deletion and an addition, so both paths count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitChanges {
    pub files: Vec<ChangedPath>,
    /// The commit is larger than nightshift reads to check it: more files or lines than the bounds
    /// [`measure_commit`] was given (`files` has them all, without their added lines), or a summary or
    /// patch longer than it reads (see [`MAX_PATCH`]). Such a commit is never proposed.
    pub too_large: bool,
}

/// The most of a commit's summary (`--raw --numstat`: a line or two per path) and of its `-U0` patch that
/// is read to check it; and the most added lines kept for the secret check, however high a trigger sets
/// `limits.max_lines`. A commit past any of them is `too_large`: an agent that writes a file of hundreds of
/// MB cannot make the service hold it in memory, line by line.
pub const MAX_SUMMARY: usize = 16 << 20;
pub const MAX_PATCH: usize = 32 << 20;
pub const MAX_CHECKED_LINES: u64 = 1_000_000;

impl CommitChanges {
    /// Lines added plus removed, over every file.
    pub fn lines(&self) -> u64 {
        self.files.iter().map(|f| f.added + f.removed).sum()
    }
}

fn mode(octal: &str) -> Result<u32> {
    u32::from_str_radix(octal, 8).with_context(|| format!("`{octal}` is not a file mode"))
}

/// Measures `commit` (a commit in the repository at `git_dir`, which nightshift built) against its first
/// parent: per path, lines added and removed, whether binary, modes before and after, and the added lines
/// (for the secret check). Runs nightshift's hardened git on the git dir, never a worktree's; the commit is
/// an object id, passed after `--end-of-options`. The counts come first: a commit with more than
/// `max_files` paths or `max_lines` lines changed (or past [`MAX_SUMMARY`], [`MAX_PATCH`] or
/// [`MAX_CHECKED_LINES`]) is `too_large`, and its patch is not read.
pub async fn measure_commit(
    git: &Git,
    git_dir: &Path,
    commit: &str,
    max_files: u64,
    max_lines: u64,
) -> Result<CommitChanges> {
    let too_large = |files| CommitChanges {
        files,
        too_large: true,
    };
    if !(commit.len() == 40 || commit.len() == 64) || !commit.bytes().all(|b| b.is_ascii_hexdigit())
    {
        bail!("`{}` is not a commit id", commit.escape_debug());
    }
    let parent = format!("{commit}^1");
    let common = [
        "-r",
        "--no-renames",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--ignore-submodules=none",
    ];
    let raw = git
        .cmd(Repo::Bare(git_dir))
        .arg("diff-tree")
        .args(common)
        .args([
            "-z",
            "--raw",
            "--numstat",
            "--end-of-options",
            &parent,
            commit,
        ])
        .max_output(MAX_SUMMARY)
        .output()
        .await;
    let raw = match raw {
        Err(e) if e.is::<OutputTooLarge>() => return Ok(too_large(Vec::new())),
        raw => raw.context("measuring the commit")?,
    };
    let mut files: Vec<ChangedPath> = Vec::new();
    let mut fields = raw.split(|b| *b == 0).peekable();
    let mut numstat = 0;
    while let Some(field) = fields.next() {
        if field.is_empty() {
            continue;
        }
        let field = String::from_utf8_lossy(field);
        if let Some(meta) = field.strip_prefix(':') {
            let parts: Vec<&str> = meta.split(' ').collect();
            let [old, new, ..] = parts[..] else {
                bail!("git diff-tree printed `{}`", field.escape_debug());
            };
            let path = fields.next().context("git diff-tree printed no path")?;
            files.push(ChangedPath {
                path: String::from_utf8_lossy(path).into_owned(),
                old_mode: mode(old)?,
                new_mode: mode(new)?,
                ..ChangedPath::default()
            });
        } else {
            let mut parts = field.splitn(3, '\t');
            let (Some(added), Some(removed), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                bail!("git diff-tree printed `{}`", field.escape_debug());
            };
            let file = files
                .get_mut(numstat)
                .filter(|f| f.path == path)
                .with_context(|| format!("git diff-tree's counts for `{path}` match no change"))?;
            if added == "-" {
                file.binary = true;
            } else {
                file.added = added.parse().context("a count of added lines")?;
                file.removed = removed.parse().context("a count of removed lines")?;
            }
            numstat += 1;
        }
    }
    if numstat != files.len() {
        bail!(
            "git diff-tree counted {numstat} of {} changed paths",
            files.len()
        );
    }

    let lines: u64 = files.iter().map(|f| f.added + f.removed).sum();
    let added: u64 = files.iter().map(|f| f.added).sum();
    if files.len() as u64 > max_files || lines > max_lines || added > MAX_CHECKED_LINES {
        return Ok(too_large(files));
    }

    // The added lines: `-U0` patches come in the same order, one `diff --git` header per path. A line of a
    // hunk always starts with ` `, `+`, `-` or `\`, so a header cannot be forged by a file's content.
    // `--text`: a binary file's lines too (a secret in a file with a NUL byte in it is still pushed).
    let patch = git
        .cmd(Repo::Bare(git_dir))
        .arg("diff-tree")
        .args(common)
        .args(["-p", "-U0", "--text", "--end-of-options", &parent, commit])
        .max_output(MAX_PATCH)
        .output()
        .await;
    let patch = match patch {
        Err(e) if e.is::<OutputTooLarge>() => return Ok(too_large(files)),
        patch => patch.context("reading the commit's added lines")?,
    };
    let mut current: Option<usize> = None;
    let mut in_hunk = false;
    let mut next_line = 0u64;
    let mut seen = 0;
    let mut kept = 0u64;
    for line in patch.split(|b| *b == b'\n') {
        if line.starts_with(b"diff --git ") {
            current = Some(seen);
            seen += 1;
            in_hunk = false;
            continue;
        }
        if line.starts_with(b"@@ ") {
            in_hunk = true;
            // `@@ -a,b +c,d @@`: c is the first new line.
            let text = String::from_utf8_lossy(line);
            next_line = text
                .split(' ')
                .find_map(|w| w.strip_prefix('+'))
                .and_then(|w| w.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            continue;
        }
        if !in_hunk {
            continue;
        }
        if let (Some(added), Some(i)) = (line.strip_prefix(b"+"), current)
            && let Some(file) = files.get_mut(i)
        {
            // A binary file's lines are not in the counts above: they are counted here.
            kept += 1;
            if kept > MAX_CHECKED_LINES {
                return Ok(too_large(files));
            }
            file.added_lines
                .push((next_line, String::from_utf8_lossy(added).into_owned()));
            next_line += 1;
        }
    }
    if seen != files.len() {
        bail!(
            "git diff-tree's patch has {seen} files, its summary {}",
            files.len()
        );
    }
    Ok(CommitChanges {
        files,
        too_large: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_for(roots: Vec<PathBuf>, home: &Path) -> Git {
        Git::new(
            GitPolicy {
                file_roots: roots,
                http_hosts: vec!["127.0.0.1".into()],
                timeout: Duration::from_secs(30),
            },
            home.to_owned(),
        )
    }

    #[test]
    fn remotes_are_https_or_local_paths_under_the_file_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let inside = root.join("remote.git");
        std::fs::create_dir(&inside).unwrap();
        let git = git_for(vec![root.join("allowed")], &root.join("home"));
        assert!(git.remote("https://github.com/o/r.git").is_ok());
        assert!(git.remote("http://127.0.0.1:8080/o/r.git").is_ok());
        for bad in [
            "ssh://github.com/o/r.git",
            "git@github.com:o/r.git",
            "ext::sh -c touch% /tmp/pwned",
            "git://github.com/o/r.git",
            "http://github.com/o/r.git",
            "http://user@127.0.0.1/o/r.git",
            "--upload-pack=touch /tmp/pwned",
            "https://github.com/o/r.git\n",
            "relative/path",
        ] {
            assert!(git.remote(bad).is_err(), "{bad} was allowed");
        }
        let err = git.remote(inside.to_str().unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("git.file_roots"), "{err:#}");

        let git = git_for(vec![root.clone()], &root.join("home"));
        assert_eq!(
            git.remote(&format!("file://{}", inside.display())).unwrap(),
            inside.to_str().unwrap()
        );
        // A link inside a root to a repository outside it is judged by where it leads.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        assert!(git.remote(root.join("link").to_str().unwrap()).is_err());
    }

    fn executable(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn a_hostile_repository_config_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let repo = root.join("repo.git");
        let out = std::process::Command::new("git")
            .args(["init", "--quiet", "--bare", repo.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        // Every one of these settings would run the script, which leaves a marker.
        let marker = root.join("ran");
        let script = root.join("evil.sh");
        executable(&script, &format!("#!/bin/sh\ntouch {}\n", marker.display()));
        let hooks = root.join("hooks");
        std::fs::create_dir(&hooks).unwrap();
        for hook in [
            "post-index-change",
            "pre-commit",
            "post-commit",
            "reference-transaction",
        ] {
            executable(
                &hooks.join(hook),
                &format!("#!/bin/sh\ntouch {}\n", marker.display()),
            );
        }
        let s = script.display();
        std::fs::write(
            repo.join("config"),
            format!(
                "[core]\n\tbare = false\n\tfsmonitor = {s}\n\thooksPath = {hooks}\n\tpager = {s}\n\
                 \tattributesFile = {attrs}\n[credential]\n\thelper = !{s}\n",
                hooks = hooks.display(),
                attrs = root.join("attrs").display(),
            ),
        )
        .unwrap();
        let work = root.join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(work.join("a"), "a").unwrap();
        let git = git_for(vec![], &root.join("home"));
        let tree = Repo::Work {
            git_dir: &repo,
            work_tree: &work,
        };
        let index = root.join("index");
        git.cmd(tree)
            .index(&index)
            .args(["add", "-A"])
            .run()
            .await
            .unwrap();
        git.cmd(tree)
            .index(&index)
            .args(["status", "--porcelain"])
            .run()
            .await
            .unwrap();
        git.cmd(tree)
            .index(&index)
            .args(["update-ref", "refs/heads/x", "HEAD"])
            .run()
            .await
            .ok();
        assert!(
            !marker.exists(),
            "a program named by the repository's config ran"
        );

        // Only command-line config decides, and git sees none of the service's environment.
        let listed = git
            .cmd(Repo::Bare(&repo))
            .args(["config", "--show-scope", "--list"])
            .run()
            .await
            .unwrap();
        assert!(
            listed.contains("command\tcore.hookspath=/dev/null"),
            "{listed}"
        );
        let env = git
            .cmd(Repo::None)
            .args(["-c", "alias.env=!env", "env"])
            .run()
            .await
            .unwrap();
        for line in env.lines() {
            let name = line.split('=').next().unwrap();
            assert!(
                PASSED_ENV.contains(&name)
                    || name.starts_with("GIT_")
                    || ["HOME", "PWD", "OLDPWD", "SHLVL", "_"].contains(&name),
                "git saw the service's {name}"
            );
        }
    }

    #[tokio::test]
    async fn a_git_call_that_hangs_is_stopped_at_the_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let git = Git::new(
            GitPolicy {
                file_roots: vec![],
                http_hosts: vec![],
                timeout: Duration::from_millis(300),
            },
            dir.path().join("home"),
        );
        let started = std::time::Instant::now();
        let err = git
            .cmd(Repo::None)
            .args(["-c", "alias.hang=!sleep 30", "hang"])
            .run()
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("took longer than"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    fn setup_git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Commits everything in `work` with `message`; the commit's id.
    fn commit_all(work: &Path, message: &str) -> String {
        setup_git(work, &["add", "-A"]);
        setup_git(work, &["commit", "-qm", message]);
        setup_git(work, &["rev-parse", "HEAD"])
    }

    #[tokio::test]
    async fn a_commit_is_measured_path_by_path_with_modes_binaries_and_added_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("scripts")).unwrap();
        setup_git(&work, &["init", "-q"]);
        std::fs::write(work.join("README.md"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(work.join("scripts/run.sh"), "echo hi\n").unwrap();
        std::fs::write(work.join("old.txt"), "gone\n").unwrap();
        setup_git(&work, &["add", "-A"]);
        setup_git(&work, &["commit", "-qm", "base"]);

        std::fs::create_dir_all(work.join(".github/workflows")).unwrap();
        std::fs::write(
            work.join(".github/workflows/ci.yml"),
            "on: push\njobs: {}\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", work.join("scripts/link")).unwrap();
        std::fs::write(work.join("logo.png"), b"\x89PNG\r\n\x1a\n\x00\x00\x00").unwrap();
        std::fs::write(work.join("README.md"), "one\n2\nthree\nfour\n").unwrap();
        std::fs::set_permissions(
            work.join("scripts/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::remove_file(work.join("old.txt")).unwrap();
        // A file whose content looks like a patch header, and a name with a tab and a newline.
        std::fs::write(
            work.join("forged.txt"),
            "diff --git a/x b/x\n@@ -1 +1 @@\n+x\n",
        )
        .unwrap();
        std::fs::write(work.join("we\tird\nname.txt"), "z\n").unwrap();
        let commit = commit_all(&work, "agent");

        let git = git_for(Vec::new(), &dir.path().join("home"));
        let changes = measure_commit(&git, &work.join(".git"), &commit, 1_000, 100_000)
            .await
            .unwrap();
        assert!(!changes.too_large);
        let by_path = |p: &str| {
            changes
                .files
                .iter()
                .find(|f| f.path == p)
                .unwrap_or_else(|| panic!("{p} not measured: {changes:?}"))
        };
        assert_eq!(changes.files.len(), 8, "{changes:?}");

        let ci = by_path(".github/workflows/ci.yml");
        assert_eq!((ci.added, ci.removed, ci.binary), (2, 0, false));
        assert_eq!((ci.old_mode, ci.new_mode), (0, 0o100644));
        assert_eq!(
            ci.added_lines,
            vec![(1, "on: push".to_owned()), (2, "jobs: {}".to_owned())]
        );

        let link = by_path("scripts/link");
        assert!(link.is_symlink());
        assert_eq!(link.link_target(), Some("../../etc/passwd"));

        let png = by_path("logo.png");
        assert!(png.binary && png.added == 0);
        // Its bytes, split at newlines, for the secret check.
        assert_eq!(png.added_lines.len(), 3, "{:?}", png.added_lines);
        assert_eq!(png.added_lines[2], (3, "\0\0\0".to_owned()));

        let readme = by_path("README.md");
        assert_eq!((readme.added, readme.removed), (2, 1));
        assert_eq!(
            readme.added_lines,
            vec![(2, "2".to_owned()), (4, "four".to_owned())]
        );

        let run = by_path("scripts/run.sh");
        assert_eq!((run.old_mode, run.new_mode), (0o100644, 0o100755));
        assert!(run.is_executable() && run.added == 0 && run.removed == 0);

        let old = by_path("old.txt");
        assert_eq!((old.removed, old.new_mode), (1, 0));

        let forged = by_path("forged.txt");
        assert_eq!(forged.added_lines.len(), 3);
        assert_eq!(
            by_path("we\tird\nname.txt").added_lines,
            vec![(1, "z".to_owned())]
        );
        assert_eq!(changes.lines(), 2 + 1 + 1 + 2 + 1 + 3 + 1);

        // The policy refuses the workflow, then (once allowed) the symlink out of the repository.
        let limits = crate::trigger::Limits::default();
        let proposal = crate::sink::policy::Proposal {
            changes: Some(&changes),
            ..Default::default()
        };
        let v = crate::sink::policy::check(&limits, &proposal).unwrap_err();
        assert_eq!(
            v.to_string(),
            "the pull request touches .github/workflows/ci.yml, which limits.paths does not allow"
        );
        let everything = crate::trigger::Limits {
            paths: Some(vec!["**".into()]),
            ..Default::default()
        };
        let v = crate::sink::policy::check(&everything, &proposal).unwrap_err();
        assert!(v.to_string().contains("symlink scripts/link"), "{v}");

        for bad in ["--output=/tmp/pwned", "HEAD", &commit[..12]] {
            assert!(
                measure_commit(&git, &work.join(".git"), bad, 1_000, 100_000)
                    .await
                    .is_err()
            );
        }
    }

    /// A commit of files the agent made hundreds of MB long: before, its whole `-U0` patch was read and
    /// every added line kept as a string of its own (~12 GB for a 400 MB file of short lines), and the
    /// service ran out of memory at each delivery attempt. Now the counts come first and the patch is read
    /// up to a bound: the commit is too large, and the policy refuses it.
    #[tokio::test]
    async fn a_commit_too_large_to_check_is_measured_by_its_counts_and_refused_without_its_patch() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        setup_git(&work, &["init", "-q"]);
        std::fs::write(work.join("README.md"), "one\n").unwrap();
        setup_git(&work, &["add", "-A"]);
        setup_git(&work, &["commit", "-qm", "base"]);
        let git = git_for(Vec::new(), &dir.path().join("home"));
        let limits = crate::trigger::Limits {
            paths: Some(vec!["**".into()]),
            ..Default::default()
        };

        // Many short lines: past `max_lines`, counted, and not one of them read.
        std::fs::write(work.join("many.txt"), "a\n".repeat(300_000)).unwrap();
        let commit = commit_all(&work, "many lines");
        let changes = measure_commit(&git, &work.join(".git"), &commit, 1_000, 100_000)
            .await
            .unwrap();
        assert!(changes.too_large);
        assert_eq!(changes.files.len(), 1);
        assert_eq!(changes.files[0].added, 300_000);
        assert!(changes.files[0].added_lines.is_empty());
        let proposal = crate::sink::policy::Proposal {
            changes: Some(&changes),
            ..Default::default()
        };
        let v = crate::sink::policy::check(&limits, &proposal).unwrap_err();
        assert_eq!(
            v.to_string(),
            "the pull request changes 300000 lines, more than limits.max_lines allows (100000)"
        );
        // A trigger that allows that many lines still does not get them all kept: past the most that is
        // checked, the commit is too large.
        let changes = measure_commit(&git, &work.join(".git"), &commit, 1_000, u64::MAX)
            .await
            .unwrap();
        assert!(!changes.too_large && changes.files[0].added_lines.len() == 300_000);

        // One line longer than the patch that is read: within every count, and too large.
        std::fs::write(work.join("long.txt"), "b".repeat(MAX_PATCH + (1 << 20))).unwrap();
        let commit = commit_all(&work, "one long line");
        let changes = measure_commit(&git, &work.join(".git"), &commit, 1_000, 100_000)
            .await
            .unwrap();
        assert!(changes.too_large, "{:?}", changes.files);
        assert_eq!(changes.files.len(), 1);
        let proposal = crate::sink::policy::Proposal {
            changes: Some(&changes),
            ..Default::default()
        };
        let v = crate::sink::policy::check(&limits, &proposal).unwrap_err();
        assert!(
            v.to_string()
                .contains("larger than nightshift reads to check a change"),
            "{v}"
        );

        // A binary file of empty lines: git counts none of them, and its bytes are read as lines for the
        // secret check, so they are counted there (kept, they were tens of bytes of memory each).
        let mut bytes = vec![0u8];
        bytes.extend(std::iter::repeat_n(b'\n', MAX_CHECKED_LINES as usize + 10));
        std::fs::write(work.join("lines.bin"), bytes).unwrap();
        let commit = commit_all(&work, "a binary of newlines");
        let changes = measure_commit(&git, &work.join(".git"), &commit, 1_000, 100_000)
            .await
            .unwrap();
        assert!(changes.files[0].binary && changes.files[0].added == 0);
        assert!(changes.too_large);
    }
}
