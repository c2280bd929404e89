//! The agent's box: every agent process (a command, Codex, Claude Code) runs under bubblewrap in namespaces
//! of its own, with a filesystem that shows it the machine read-only, hides the service's secrets and other
//! jobs, and lets it write only its worktree and its job's folders. [`command_line`] builds the bubblewrap
//! argv from a [`BoxSpec`]; [`Limits`] are set on the process before it starts; [`init`] is the small
//! program (`nightshift box-init`) that runs first inside a box with a gateway and forwards the box's
//! loopback port to the gateway's socket outside.
//!
//! What is hidden (the rule, see `docs/security-box.md`):
//! - always `/tmp`, `/var/tmp` and `/run` (other programs' sockets and files), a fresh `/dev` and `/proc`;
//! - the service's data dir (mirrors, worktrees, jobs, usually the store), the service's `HOME` and the
//!   folders of the config file, the App key and the store, each under an empty read-only tmpfs, unless it
//!   is `/` or a system folder ([`SYSTEM_DIRS`]), which is never hidden whole;
//! - the config file, the App key file and the store's files (`-wal`, `-shm`, `-journal`) wherever they
//!   still show: `/dev/null` is bound over each.
//!
//! Then only what the job needs comes back: its worktree and job folders read-write, and read-only its
//! repository's mirror (the worktree's git objects) and the agent's own program when it lives in a hidden
//! place. The deepest mount decides what a path shows, so a file bound back inside a hidden folder is
//! visible, and a secret file inside a folder bound back is still masked.

pub mod harden;
pub mod init;

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// Where the nightshift binary is bound inside a box (it runs the forwarder).
pub const INIT_PATH: &str = "/run/nightshift/nightshift";
/// Where the gateway's socket is bound inside a box.
pub const GATEWAY_SOCKET: &str = "/run/nightshift/gateway.sock";

/// Folders never hidden whole, even when a hidden thing lives there: the box needs them to run programs.
pub const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/sbin",
    "/srv",
    "/sys",
    "/usr",
    "/usr/local",
    "/var",
    "/var/lib",
];

/// Folders hidden in every box: other programs' temporary files and sockets (a unix socket such as
/// `/run/docker.sock` stays reachable on a read-only mount).
pub const ALWAYS_HIDDEN: &[&str] = &["/tmp", "/var/tmp", "/run"];

/// The most a hidden folder's tmpfs may hold (it is remounted read-only once the job's paths are bound).
const HIDDEN_TMPFS_SIZE: &str = "1048576";

/// The size of the box's `/dev/shm`.
const SHM_SIZE: &str = "67108864";

/// What a job's box shows and allows.
#[derive(Clone, Debug)]
pub struct BoxSpec {
    /// The working directory; writable unless `read_only_worktree`.
    pub worktree: PathBuf,
    pub read_only_worktree: bool,
    /// The job's folders the agent may write (its home, temporary and output folders).
    pub writable: Vec<PathBuf>,
    /// Paths shown read-only even when they lie in a hidden place (the repository's mirror, the agent's
    /// program).
    pub read_only: Vec<PathBuf>,
    /// Folders (an empty tmpfs over each) and files (`/dev/null` over each) the agent must not see.
    pub hidden: Vec<PathBuf>,
    pub network: Network,
    pub limits: Limits,
    /// The nightshift binary, bound at [`INIT_PATH`] to run the forwarder (only with a gateway).
    pub init: PathBuf,
}

/// The network a box has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// Only a loopback device with nothing on it.
    None,
    /// Loopback, with `127.0.0.1:port` forwarded to the gateway's unix socket outside the box.
    Gateway { socket: PathBuf, port: u16 },
    /// The host's network (a command profile's `network: true`, and the agent CLIs until they talk to the
    /// model through the gateway).
    Host,
}

/// Resource limits of one agent process and everything it starts (set with `setrlimit` before exec, so
/// inherited). `processes` is RLIMIT_NPROC, counted per user: it counts every process and thread of the
/// service's user (the service's own threads and every job's processes, boxed or not), and the kernel does
/// not apply it at all to root (kuid 0, even inside a user namespace): run nightshift as a dedicated user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NPROC: processes and threads.
    pub processes: u64,
    /// RLIMIT_DATA, bytes: each process's heap and private writable memory (not address space
    /// reservations, which Node.js makes by the gigabyte).
    pub memory: u64,
    /// RLIMIT_FSIZE, bytes: the largest file a process may write (or truncate up to).
    pub file_size: u64,
    /// RLIMIT_NOFILE: open file descriptors per process.
    pub open_files: u64,
    /// Bytes of disk the job's folders (its worktree, the verify steps' checkout, its home, temporary and
    /// output folders) may hold at once, checked every few seconds while it runs (not an rlimit: see
    /// `queue::worker::disk_watch`).
    pub disk: u64,
    /// Files, folders and links those folders may hold at once (the disk's inodes), checked with `disk`.
    pub disk_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            processes: 1024,
            memory: 4 << 30,
            file_size: 1 << 30,
            open_files: 4096,
            disk: 16 << 30,
            disk_files: 1_000_000,
        }
    }
}

impl Limits {
    /// Sets these limits (soft and hard) on the calling process; meant for the child between fork and
    /// exec (async-signal-safe: it only calls setrlimit).
    pub fn apply(&self) -> std::io::Result<()> {
        for (resource, value) in [
            (libc::RLIMIT_NPROC, self.processes),
            (libc::RLIMIT_DATA, self.memory),
            (libc::RLIMIT_FSIZE, self.file_size),
            (libc::RLIMIT_NOFILE, self.open_files),
        ] {
            let limit = libc::rlimit {
                rlim_cur: value as libc::rlim_t,
                rlim_max: value as libc::rlim_t,
            };
            // SAFETY: setrlimit reads the struct we pass and nothing else.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The seccomp filters every agent runs under, boxed or not (compiled before the fork: nothing may
/// allocate between it and exec). Both refuse calls that would take disk space, or do file I/O, where no
/// limit or walk sees it:
/// - `fallocate` fails with `EOPNOTSUPP` (as on a filesystem without it; glibc's `posix_fallocate` then
///   writes the blocks, within `file_size`): with `FALLOC_FL_KEEP_SIZE` on a deleted file it took 256 MiB of
///   disk in a millisecond, past RLIMIT_FSIZE and past any walk of the job's folders, so the disk could be
///   full before the service looked at its free space;
/// - `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail with `ENOSYS` (as on a kernel without
///   it; libuv and others fall back to threads): io_uring's operations, its fallocate among them, are not
///   system calls a filter sees.
pub fn syscall_filters() -> anyhow::Result<Vec<seccompiler::BpfProgram>> {
    let always = |call: i64| (call, Vec::new());
    Ok(vec![
        refusing(vec![always(libc::SYS_fallocate)], libc::EOPNOTSUPP)?,
        refusing(
            vec![
                always(libc::SYS_io_uring_setup),
                always(libc::SYS_io_uring_enter),
                always(libc::SYS_io_uring_register),
            ],
            libc::ENOSYS,
        )?,
    ])
}

/// A seccomp filter for this machine that fails the system calls `calls` names with `errno` (each call
/// always, or when one of its rules' conditions on its arguments hold) and allows every other.
pub fn refusing(
    calls: Vec<(i64, Vec<seccompiler::SeccompRule>)>,
    errno: i32,
) -> anyhow::Result<seccompiler::BpfProgram> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("no seccomp filter for this machine: {e}"))?;
    let filter = SeccompFilter::new(
        calls.into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(|e| anyhow::anyhow!("building a seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e| anyhow::anyhow!("compiling a seccomp filter: {e}"))
}

/// Installs `filters` ([`syscall_filters`]) on the calling thread, with no-new-privileges (which seccomp
/// requires unprivileged); meant for the child between fork and exec (it allocates nothing).
pub fn apply_syscall_filters(filters: &[seccompiler::BpfProgram]) -> std::io::Result<()> {
    for filter in filters {
        seccompiler::apply_filter(filter).map_err(|e| match e {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    }
    Ok(())
}

/// Folders of the machine a profile shows in its boxes even where they would be hidden (`shared:`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    pub read_only: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
}

/// `limits:` in an agent profile: every key optional, sizes as bytes or with a unit (`512M`, `4GiB`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub processes: Option<u64>,
    pub memory: Option<Size>,
    pub file_size: Option<Size>,
    pub open_files: Option<u64>,
    pub disk: Option<Size>,
    pub disk_files: Option<u64>,
}

impl LimitsFile {
    pub fn resolve(&self) -> Limits {
        let d = Limits::default();
        Limits {
            processes: self.processes.unwrap_or(d.processes),
            memory: self.memory.map_or(d.memory, |s| s.0),
            file_size: self.file_size.map_or(d.file_size, |s| s.0),
            open_files: self.open_files.unwrap_or(d.open_files),
            disk: self.disk.map_or(d.disk, |s| s.0),
            disk_files: self.disk_files.unwrap_or(d.disk_files),
        }
    }
}

/// A size in bytes, written as a number or with a unit (K, M, G, T; KiB, MiB... are the same, powers of 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Size(n)),
            Raw::Text(t) => parse_size(&t).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{t}` is not a size; write bytes or a number with a unit, e.g. 512M, 4G"
                ))
            }),
        }
    }
}

/// `512M`, `4GiB`, `1024` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// `bytes` in the largest unit of [`parse_size`]'s it is at least one of, with one decimal (`1.5 GiB`).
pub fn size_text(bytes: u64) -> String {
    let (shift, unit) = match bytes {
        b if b >= 1 << 40 => (40, "TiB"),
        b if b >= 1 << 30 => (30, "GiB"),
        b if b >= 1 << 20 => (20, "MiB"),
        b if b >= 1 << 10 => (10, "KiB"),
        b => return format!("{b} bytes"),
    };
    let tenths = (bytes as u128 * 10) >> shift;
    format!("{}.{} {unit}", tenths / 10, tenths % 10)
}

/// The hidden paths of every box of a service: [`ALWAYS_HIDDEN`], the data dir, the service's home, the
/// folders of the config file, the App key file and the store (unless system folders), and those files
/// themselves (the store's with its `-wal`, `-shm` and `-journal`).
pub fn hidden_paths(
    data_dir: &Path,
    home: Option<&Path>,
    secret_files: &[PathBuf],
    store: &str,
) -> Vec<PathBuf> {
    let mut hidden: Vec<PathBuf> = ALWAYS_HIDDEN.iter().map(PathBuf::from).collect();
    hidden.push(data_dir.to_owned());
    hidden.extend(home.map(Path::to_owned));
    for file in secret_files {
        hidden.push(file.clone());
        if let Some(folder) = file.parent() {
            hidden.push(folder.to_owned());
        }
    }
    if let Some(db) = store.strip_prefix("sqlite://")
        && !db.starts_with(':')
    {
        let db = Path::new(db.split('?').next().unwrap_or(db));
        hidden.extend(db.parent().map(Path::to_owned));
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            hidden.push(PathBuf::from(name));
        }
    }
    hidden
        .into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .filter(|p| !is_system_dir(p))
        .collect()
}

fn is_system_dir(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| Path::new(d) == path)
}

/// The path as the kernel sees it (symlinks resolved), or as given, made absolute, when it does not exist.
fn real(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_owned()))
}

fn depth(path: &Path) -> usize {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mount {
    Hidden,
    ReadOnly,
    Writable,
}

/// The argv that runs `agent` in the box `spec` describes.
pub fn command_line(spec: &BoxSpec, agent: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = ["bwrap", "--unshare-all"].map(str::to_owned).to_vec();
    if blocks_nested_userns() {
        // No user namespace inside the box: in one of its own, a process has every capability over
        // what it mounts, and a tmpfs takes the machine's memory past every limit of the job's.
        argv.extend(["--unshare-user", "--disable-userns"].map(str::to_owned));
    }
    if spec.network == Network::Host {
        argv.push("--share-net".into());
    }
    argv.extend(
        [
            "--new-session",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            // Shared memory the box may use, but not the half of the machine's memory a tmpfs takes by default.
            "--size",
            SHM_SIZE,
            "--tmpfs",
            "/dev/shm",
        ]
        .map(str::to_owned),
    );

    // Folders to hide, and every path bound back, applied shallowest first so the deepest one decides.
    let mut mounts: Vec<(PathBuf, Mount)> = Vec::new();
    let mut files = Vec::new();
    let always = ALWAYS_HIDDEN.iter().map(PathBuf::from);
    for path in spec.hidden.iter().cloned().chain(always) {
        let path = real(&path);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                if !is_system_dir(&path) {
                    mounts.push((path, Mount::Hidden));
                }
            }
            Ok(_) => files.push(path),
            Err(_) => {}
        }
    }
    for path in &spec.read_only {
        if path.exists() {
            mounts.push((real(path), Mount::ReadOnly));
        }
    }
    let worktree = real(&spec.worktree);
    mounts.push((
        worktree.clone(),
        if spec.read_only_worktree {
            Mount::ReadOnly
        } else {
            Mount::Writable
        },
    ));
    for path in &spec.writable {
        mounts.push((real(path), Mount::Writable));
    }
    mounts.sort_by(|a, b| (depth(&a.0), a.1, &a.0).cmp(&(depth(&b.0), b.1, &b.0)));
    mounts.dedup_by(|later, earlier| later.0 == earlier.0 && later.1 == earlier.1);
    let mut tmpfs = Vec::new();
    for (path, mount) in &mounts {
        let p = path.display().to_string();
        match mount {
            Mount::Hidden => {
                // A hidden folder inside another is hidden already, unless something between was bound back.
                if shown_by(&mounts, path.parent().unwrap_or(path)) == Some(Mount::Hidden) {
                    continue;
                }
                argv.extend([
                    "--size".into(),
                    HIDDEN_TMPFS_SIZE.into(),
                    "--tmpfs".into(),
                    p.clone(),
                ]);
                tmpfs.push(p);
            }
            Mount::ReadOnly => argv.extend(["--ro-bind".into(), p.clone(), p]),
            Mount::Writable => argv.extend(["--bind".into(), p.clone(), p]),
        }
    }
    let gateway = match &spec.network {
        Network::Gateway { socket, port } => Some((socket, *port)),
        _ => None,
    };
    if let Some((socket, _)) = gateway {
        // /run is always hidden, so its tmpfs takes these (created before it is made read-only).
        argv.extend([
            "--ro-bind".into(),
            spec.init.display().to_string(),
            INIT_PATH.into(),
            "--ro-bind".into(),
            socket.display().to_string(),
            GATEWAY_SOCKET.into(),
        ]);
    }
    for file in files {
        if shown_by(&mounts, &file) != Some(Mount::Hidden) {
            let p = file.display().to_string();
            argv.extend(["--ro-bind".into(), "/dev/null".into(), p]);
        }
    }
    for p in tmpfs.into_iter().chain(["/dev".to_owned()]) {
        argv.extend(["--remount-ro".into(), p]);
    }
    argv.extend([
        "--chdir".into(),
        worktree.display().to_string(),
        "--".into(),
    ]);
    if let Some((_, port)) = gateway {
        argv.extend([
            INIT_PATH.into(),
            "box-init".into(),
            "--forward".into(),
            format!("127.0.0.1:{port}={GATEWAY_SOCKET}"),
            "--".into(),
        ]);
    }
    argv.extend(agent.iter().cloned());
    argv
}

/// Which of `mounts` decides what `path` shows (the deepest one containing it); None for the root.
fn shown_by(mounts: &[(PathBuf, Mount)], path: &Path) -> Option<Mount> {
    mounts
        .iter()
        .filter(|(m, _)| path.starts_with(m))
        .max_by_key(|(m, kind)| (depth(m), *kind))
        .map(|(_, kind)| *kind)
}

/// The program `argv0` names, as a path: itself when it has a slash, else found on `path` (a PATH value).
pub fn locate_program(argv0: &str, path: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    if argv0.contains('/') {
        return Some(cwd.join(argv0));
    }
    std::env::split_paths(OsStr::new(path?))
        .map(|dir| dir.join(argv0))
        .find(|candidate| candidate.is_file())
}

/// The folders to show read-only so that `program` (as located on PATH) can run: the folder it was found in
/// (so it is found by name in the box too), and the folder holding the file it resolves to; for a program
/// installed by npm (`node_modules/.bin/codex` is a link into its package) the outermost `node_modules`
/// folder on the way, since a package needs its dependencies beside it.
pub fn program_folders(program: &Path) -> Vec<PathBuf> {
    let resolved = real(program);
    let package_root = resolved
        .ancestors()
        .filter(|a| a.file_name() == Some(OsStr::new("node_modules")))
        .last()
        .map(Path::to_owned);
    let mut folders: Vec<PathBuf> = package_root
        .or_else(|| resolved.parent().map(Path::to_owned))
        .into_iter()
        .collect();
    if let Some(found_in) = std::path::absolute(program)
        .ok()
        .and_then(|p| p.parent().map(real))
        && !folders.iter().any(|f| found_in.starts_with(f))
    {
        folders.push(found_in);
    }
    folders
}

/// Whether the box can be kept from making user namespaces here (`--unshare-user --disable-userns`:
/// bubblewrap 0.8.0 and later, and a machine where the box's own user namespace can be made), found out
/// once by running `true` so. In a user namespace of its own, a process in the box would have every
/// capability over what it mounts (a tmpfs: memory no rlimit counts) and the kernel's code for namespaces
/// to attack, which is where most of its privilege-escalation bugs have been. Without it the box is made
/// as before (`--unshare-all` makes a user namespace where it can) and `serve` warns at start.
pub fn blocks_nested_userns() -> bool {
    static BLOCKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BLOCKS.get_or_init(|| {
        std::process::Command::new("bwrap")
            .args([
                "--unshare-all",
                "--unshare-user",
                "--disable-userns",
                "--die-with-parent",
                "--ro-bind",
                "/",
                "/",
                "--",
                "true",
            ])
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Runs a trivial program in a minimal box: Ok when bubblewrap can create its namespaces here, else the
/// reason and what to do about it.
pub fn probe() -> Result<(), String> {
    let spec = BoxSpec {
        worktree: PathBuf::from("/"),
        read_only_worktree: true,
        writable: Vec::new(),
        read_only: Vec::new(),
        hidden: Vec::new(),
        network: Network::None,
        limits: Limits::default(),
        init: PathBuf::new(),
    };
    let argv = command_line(&spec, &["true".to_owned()]);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        // Found on the PATH agents are started with (the service's), as every box is.
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .stdin(std::process::Stdio::null())
        .output();
    let reason = match out {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "bubblewrap (`bwrap`) is not installed".to_owned()
        }
        Err(e) => format!("cannot run bwrap: {e}"),
    };
    Err(format!(
        "bubblewrap cannot create the agents' box here: {reason}. To fix it: install bubblewrap (Debian/Ubuntu \
         `apt install bubblewrap`, Fedora `dnf install bubblewrap`); let unprivileged users create user \
         namespaces (`sysctl kernel.unprivileged_userns_clone=1` on Debian kernels, `user.max_user_namespaces` \
         above 0, and on Ubuntu 24.04+ `kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile \
         for bwrap); in a container, run it with a seccomp and AppArmor profile that allow `unshare`/`clone` \
         of namespaces and `mount` (Kubernetes: `securityContext.seccompProfile` and `appArmorProfile` \
         `Unconfined` or a custom profile allowing them; Docker: `--security-opt seccomp=unconfined \
         --security-opt apparmor=unconfined`), or give every agent profile `sandbox: none` (not recommended)"
    ))
}

#[cfg(test)]
mod tests;
