//! Reading files an agent or a repository could have planted, without trusting them.
//!
//! Every file nightshift reads from a job's folders after an agent ran (`message.md`, `review.json`), and
//! every copy of repository content it reads (`AGENTS.md`, `SKILL.md`), goes through [`read_beneath`]: the
//! folder and each path component below it are opened with `O_NOFOLLOW|O_DIRECTORY`, the file itself with
//! `O_NOFOLLOW|O_NONBLOCK`, so no symbolic link anywhere on the way is followed; only a regular file is read
//! (a FIFO, a device or a socket is refused before a byte is read, so nothing blocks), and never more than a
//! cap, so a sparse 3 GiB file or a link to `/dev/zero` costs nothing.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// What was read: at most the cap, and whether the file was longer.
#[derive(Debug, PartialEq, Eq)]
pub struct Limited {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0} is a symlink; nightshift reads only regular files")]
    Symlink(String),
    #[error("{0} is {1}; nightshift reads only regular files")]
    NotRegular(String, &'static str),
    #[error("{0} is not a plain path below its folder")]
    BadPath(String),
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
}

/// What kind of file `mode` (from `stat`) describes, in words.
fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a folder",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symlink",
        _ => "not a regular file",
    }
}

fn open_at(dir: Option<&OwnedFd>, name: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let at = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: `c` is a valid NUL-terminated string and `at` an open descriptor (or AT_FDCWD).
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Opens the folder `dir` itself without following a link in its last component (the folders above it
/// are the service's own).
fn open_dir(dir: &Path, shown: &str) -> Result<OwnedFd, Refused> {
    open_at(
        None,
        dir,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
    .map_err(|e| refusal(None, dir, shown, e))
}

/// The error for a failed open of `name` (in `dir`, or the path itself), shown as `shown`. Opening a
/// symlink with `O_NOFOLLOW|O_DIRECTORY` fails with ENOTDIR rather than ELOOP, so what is there is looked
/// up (without following it) to say which.
fn refusal(dir: Option<&OwnedFd>, name: &Path, shown: &str, e: std::io::Error) -> Refused {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Refused::Symlink(shown.to_owned()),
        Some(libc::ENOTDIR) => match lstat_at(dir, name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                Refused::Symlink(shown.to_owned())
            }
            Ok(st) => Refused::NotRegular(shown.to_owned(), kind(st.st_mode)),
            Err(_) => Refused::NotRegular(shown.to_owned(), "not a folder"),
        },
        _ => Refused::Io(shown.to_owned(), e),
    }
}

fn lstat_at(dir: Option<&OwnedFd>, name: &Path) -> std::io::Result<libc::stat> {
    let c = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let at = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `at` open (or AT_FDCWD), `st` a valid out-pointer.
    if unsafe { libc::fstatat(at, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Reads `rel` below the folder `base`, following no symlink on the way, only if it is a regular file, and
/// at most `cap` bytes. `Ok(None)` when the file (or a folder on its way) does not exist. Errors name the
/// file by `rel` (the agent's or the repository's name for it, not a server path).
pub fn read_beneath(base: &Path, rel: &str, cap: usize) -> Result<Option<Limited>, Refused> {
    let mut parts = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            _ => return Err(Refused::BadPath(rel.to_owned())),
        }
    }
    let Some((file, folders)) = parts.split_last() else {
        return Err(Refused::BadPath(rel.to_owned()));
    };
    let base_name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| base.display().to_string());
    let mut dir = match open_dir(base, &format!("the {base_name} folder")) {
        Err(Refused::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let mut walked = std::path::PathBuf::new();
    for folder in folders {
        walked.push(folder);
        let shown = walked.display().to_string();
        dir = match open_at(
            Some(&dir),
            Path::new(folder),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        ) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refusal(Some(&dir), Path::new(folder), &shown, e)),
        };
    }
    let fd = match open_at(
        Some(&dir),
        Path::new(file),
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
    ) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refusal(Some(&dir), Path::new(file), rel, e)),
    };
    let st = fstat(&fd).map_err(|e| Refused::Io(rel.to_owned(), e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Refused::NotRegular(rel.to_owned(), kind(st.st_mode)));
    }
    let mut bytes = Vec::with_capacity((st.st_size.max(0) as usize).min(cap).min(1 << 20) + 1);
    File::from(fd)
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Refused::Io(rel.to_owned(), e))?;
    let truncated = bytes.len() > cap;
    bytes.truncate(cap);
    Ok(Some(Limited { bytes, truncated }))
}

/// Removes `path` and everything below it, following no link (a link is removed, never what it points at),
/// like `std::fs::remove_dir_all`, but in constant stack and with short paths however deep the tree: each
/// folder's subfolders are first moved up into `path` itself, then the folder, emptied, is removed. The
/// standard one goes down one call (and one open folder) per level: a job's folders hold what its agent
/// made, and a tree 15,000 folders deep overflowed a runtime thread's stack and aborted the service, again
/// at each start that cleared the job's folder. A folder whose permissions forbid listing or emptying it is
/// given them (the agent's own files, made by the service's user). `NotFound` when `path` does not exist.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::io::ErrorKind;
    if !std::fs::symlink_metadata(path)?.is_dir() {
        return std::fs::remove_file(path);
    }
    let mut pending = vec![path.to_owned()];
    let mut moved = 0u64;
    while let Some(dir) = pending.pop() {
        let entries = read_dir_owned(&dir)?;
        for entry in entries {
            let entry = entry?;
            let child = entry.path();
            if !entry.file_type()?.is_dir() {
                with_access(&dir, || std::fs::remove_file(&child))?;
            } else if dir == path {
                pending.push(child);
            } else {
                // Up into `path`, under a name nothing there has.
                let up = loop {
                    moved += 1;
                    let up = path.join(format!(".removing-{moved}"));
                    match std::fs::symlink_metadata(&up) {
                        Err(e) if e.kind() == ErrorKind::NotFound => break up,
                        _ => continue,
                    }
                };
                with_access(&dir, || std::fs::rename(&child, &up))?;
                pending.push(up);
            }
        }
        if dir != path {
            with_access(path, || std::fs::remove_dir(&dir))?;
        }
    }
    std::fs::remove_dir(path)
}

/// What folders hold on disk: bytes allocated (a sparse file counts what it uses, not its length) and
/// entries (files, folders, links: the disk's inodes), a file with several names once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    /// Entries of some folder kept vanishing between being listed and being read, through every listing
    /// again: what was renamed away as it was read is not in the sum.
    pub unsettled: bool,
}

impl Usage {
    /// Whether this is past `limit` in bytes or in entries.
    pub fn over(&self, limit: Usage) -> bool {
        self.bytes > limit.bytes || self.entries > limit.entries
    }
}

/// Bytes of folder names the walk of [`usage`] may hold at once (folders found and not yet listed, each
/// name counted with [`NAME_COST`] more for what holds it): a listing of a million folders with long names
/// would otherwise be held in the service's memory.
const WALK_NAMES: usize = 64 << 20;
const NAME_COST: usize = 48;

/// How many times [`usage`] lists a folder again when entries it listed were gone when read (renamed
/// away, or removed): what was renamed is found under its new name.
const RELISTS: u32 = 8;

/// A folder on the way down from a root to the one open: who it is, and what its walk still needs.
struct Level {
    id: (u64, u64),
    /// Subfolders not walked yet, with their inodes.
    pending: Vec<(std::ffi::OsString, u64)>,
    /// The inodes of its entries counted (or waiting) already, so that listing it again counts only
    /// what is new.
    counted: std::collections::HashSet<u64>,
    /// Entries listed and gone when read, since it was last listed; and how often it was listed again.
    misses: u32,
    relists: u32,
    /// Its mode before the walk made it listable, put back when the walk leaves it.
    restore: Option<libc::mode_t>,
}

/// Adds up what the folders `roots` hold (a missing one holds nothing), while whoever owns them may still be
/// writing, and stops as soon as the sum is past `limit`. The walk goes by descriptor: each folder is opened
/// from its parent's descriptor (`openat`, `O_NOFOLLOW`), never by a path, so no link anywhere is followed
/// and no depth is too deep to name; it holds one folder open at a time, and goes back up through `..`,
/// checked to be the folder it came from. Every file is counted once however many names it has. An entry
/// listed and gone when read has the folder listed again (up to [`RELISTS`] times), so one renamed away
/// is found under its new name; past that the sum is `unsettled`. A folder refused to its owner is made
/// listable by its owner (`u+rx`, on the folder itself) and given its mode back when the walk leaves it.
/// Errors, never a smaller sum: a folder that cannot be listed, one moved away while below it
/// (`ErrorKind::Interrupted`: measure again), or more folders waiting than [`WALK_NAMES`] allows.
pub fn usage(roots: &[std::path::PathBuf], limit: Usage) -> std::io::Result<Usage> {
    use std::io::{Error, ErrorKind};
    let mut sum = Usage::default();
    let mut linked = std::collections::HashSet::new();
    for root in roots {
        let path = CString::new(root.as_os_str().as_bytes()).map_err(Error::other)?;
        // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned at once.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = Error::last_os_error();
            match e.raw_os_error() {
                // Not there, or not a folder (a link, a file): it holds nothing of the job's.
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => continue,
                _ => return Err(e),
            }
        }
        // SAFETY: `raw` was just opened and is owned by nothing else.
        let mut here = unsafe { OwnedFd::from_raw_fd(raw) };
        let top = fstat(&here)?;
        sum.bytes += top.st_blocks as u64 * 512;
        sum.entries += 1;
        let mut waiting = 0usize;
        let mut path = vec![Level {
            id: (top.st_dev, top.st_ino),
            pending: Vec::new(),
            counted: Default::default(),
            misses: 0,
            relists: 0,
            restore: None,
        }];
        let mut listed = true;
        while let Some(level) = path.last_mut() {
            if listed {
                listed = false;
                list_counted(&here, level, &mut sum, &mut linked, &mut waiting, limit)
                    .map_err(|e| named(e, root, path.len() - 1))?;
                if sum.over(limit) {
                    return Ok(sum);
                }
                continue;
            }
            if let Some((name, ino)) = level.pending.pop() {
                waiting -= name.len() + NAME_COST;
                let Some(child) = open_below(&here, &name)? else {
                    // Renamed away, perhaps: listed again, it is found under its new name.
                    level.counted.remove(&ino);
                    level.misses += 1;
                    continue;
                };
                let st = fstat(&child)?;
                here = child;
                path.push(Level {
                    id: (st.st_dev, st.st_ino),
                    pending: Vec::new(),
                    counted: Default::default(),
                    misses: 0,
                    relists: 0,
                    restore: None,
                });
                listed = true;
                continue;
            }
            if level.misses > 0 {
                if level.relists < RELISTS {
                    level.relists += 1;
                    level.misses = 0;
                    listed = true;
                    continue;
                }
                sum.unsettled = true;
            }
            if let Some(mode) = level.restore {
                let _ = set_mode(&here, mode);
            }
            path.pop();
            let Some(parent) = path.last() else {
                break;
            };
            let up = open_below(&here, std::ffi::OsStr::new(".."))?
                .ok_or_else(|| Error::new(ErrorKind::Interrupted, "a folder was moved"))?;
            let st = fstat(&up)?;
            if (st.st_dev, st.st_ino) != parent.id {
                return Err(Error::new(
                    ErrorKind::Interrupted,
                    "a folder was moved while it was measured",
                ));
            }
            here = up;
        }
    }
    Ok(sum)
}

/// `e` from listing a folder `depth` levels below `root`, said without the server's path.
fn named(e: std::io::Error, root: &Path, depth: usize) -> std::io::Error {
    let name = root.file_name().unwrap_or_default().to_string_lossy();
    std::io::Error::new(
        e.kind(),
        format!("listing a folder {depth} levels below {name}: {e}"),
    )
}

/// Opens `name` in the folder `dir` as a descriptor of the folder itself (`O_PATH`), never following a
/// link; `None` when it is gone or is no longer a folder.
fn open_below(dir: &OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<Option<OwnedFd>> {
    let name = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: openat(2) of a NUL-terminated name below an open descriptor; the result is owned at once.
    let raw = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `raw` was just opened and is owned by nothing else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Sets the mode of the folder `dir` holds, through the descriptor's name in `/proc` (an `O_PATH`
/// descriptor takes no `fchmod`): the folder itself, whatever its path now.
fn set_mode(dir: &OwnedFd, mode: libc::mode_t) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", dir.as_raw_fd()),
        std::fs::Permissions::from_mode(mode & 0o7777),
    )
}

/// Lists the folder `dir` (again, when `level` counted some of it before) into `sum` and `level`: each
/// entry not counted in it yet is counted (a file with several names once in the whole walk, by
/// `linked`), each new subfolder is added to its pending ones (its name's bytes to `waiting`), each entry
/// gone when read is a miss. Listed through the descriptor's name in `/proc`, which is the folder itself
/// whatever its path; a folder its owner may not list or search is made so first. Stops once `sum` is
/// past `limit`.
fn list_counted(
    dir: &OwnedFd,
    level: &mut Level,
    sum: &mut Usage,
    linked: &mut std::collections::HashSet<(u64, u64)>,
    waiting: &mut usize,
    limit: Usage,
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let st = fstat(dir)?;
    // SAFETY: geteuid(2) has no preconditions.
    if st.st_mode & 0o500 != 0o500 && unsafe { libc::geteuid() } == st.st_uid {
        set_mode(dir, st.st_mode | 0o500)?;
        level.restore.get_or_insert(st.st_mode);
    }
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let entry = entry?;
        if level.counted.contains(&entry.ino()) {
            continue;
        }
        // `DirEntry::metadata` does not follow a link.
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                level.misses += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        level.counted.insert(meta.ino());
        if meta.is_dir() {
            let name = entry.file_name();
            *waiting += name.len() + NAME_COST;
            if *waiting > WALK_NAMES {
                return Err(std::io::Error::other(format!(
                    "more than {} MiB of folder names waiting to be listed",
                    WALK_NAMES >> 20
                )));
            }
            level.pending.push((name, meta.ino()));
        } else if meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
            continue;
        }
        sum.bytes += meta.blocks() * 512;
        sum.entries += 1;
        if sum.over(limit) {
            return Ok(());
        }
    }
    Ok(())
}

/// [`remove_tree`] on a blocking thread.
pub async fn remove_tree_async(path: &Path) -> std::io::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || remove_tree(&path))
        .await
        .map_err(std::io::Error::other)?
}

/// The entries of `dir`, making it listable first if it is not.
fn read_dir_owned(dir: &Path) -> std::io::Result<std::fs::ReadDir> {
    with_access(dir, || std::fs::read_dir(dir))
}

/// `op`, done again once `dir` is made readable, writable and searchable by its owner if it was refused.
fn with_access<T>(dir: &Path, op: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
    use std::os::unix::fs::PermissionsExt;
    match op() {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            op()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn usage_counts_what_the_disk_holds_once_and_nothing_hides_from_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(job.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let unlimited = Usage {
            bytes: u64::MAX,
            entries: u64::MAX,
            unsettled: false,
        };
        let empty = usage(std::slice::from_ref(&job), unlimited).unwrap();
        assert_eq!(empty.entries, 3);
        // 4 MiB written, a second name for it, a 2 GiB sparse file, a link to 8 MiB outside.
        std::fs::write(job.join("a/b/data"), vec![7u8; 4 << 20]).unwrap();
        std::fs::hard_link(job.join("a/b/data"), job.join("a/again")).unwrap();
        std::fs::File::create(job.join("sparse"))
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 8 << 20]).unwrap();
        symlink(outside.join("big"), job.join("link")).unwrap();
        symlink(&outside, job.join("a/dir-link")).unwrap();
        // A folder its owner may not list (as root, it can be listed all the same).
        std::fs::create_dir(job.join("locked")).unwrap();
        std::fs::write(job.join("locked/more"), vec![3u8; 1 << 20]).unwrap();
        std::fs::set_permissions(job.join("locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        // A missing root holds nothing.
        let roots = [job.clone(), dir.path().join("missing")];
        let used = usage(&roots, unlimited).unwrap();
        assert!(
            used.bytes >= (5 << 20) && used.bytes < (6 << 20),
            "{} bytes",
            used.bytes
        );
        // data (its second name not again), sparse, the two links, locked and what it holds.
        assert_eq!(used.entries, 3 + 6);
        // Made listable by its owner, nothing more.
        let mode = std::fs::metadata(job.join("locked"))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o700 == 0o500 || mode & 0o700 == 0, "{mode:o}");
        // The walk stops once past the limit.
        let limit = Usage {
            bytes: 1 << 20,
            ..unlimited
        };
        assert!(
            usage(std::slice::from_ref(&job), limit)
                .unwrap()
                .over(limit)
        );
        let limit = Usage {
            entries: 4,
            ..unlimited
        };
        let stopped = usage(std::slice::from_ref(&job), limit).unwrap();
        assert_eq!(stopped.entries, 5);
        // A tree deeper than a path can name is walked all the same (by descriptor), and counted.
        let before = usage(std::slice::from_ref(&job), unlimited).unwrap();
        let deep = job.join("deep");
        std::fs::create_dir(&deep).unwrap();
        let name = CString::new("d").unwrap();
        let start = CString::new(deep.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain open/mkdirat/openat/close on descriptors this test owns.
        unsafe {
            let mut fd = libc::open(start.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            for _ in 0..2100 {
                assert_eq!(libc::mkdirat(fd, name.as_ptr(), 0o700), 0);
                let next = libc::openat(fd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                libc::close(fd);
                fd = next;
            }
            let file = CString::new("bottom").unwrap();
            let f = libc::openat(fd, file.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600);
            let bytes = vec![9u8; 1 << 20];
            assert_eq!(libc::write(f, bytes.as_ptr().cast(), bytes.len()), 1 << 20);
            libc::close(f);
            libc::close(fd);
        }
        let after = usage(std::slice::from_ref(&job), unlimited).unwrap();
        assert_eq!(after.entries, before.entries + 1 + 2100 + 1);
        assert!(after.bytes >= before.bytes + (1 << 20), "{after:?}");
        // The root itself a link: nothing of the job's is there.
        let linked = dir.path().join("linked");
        symlink(&outside, &linked).unwrap();
        assert_eq!(usage(&[linked], unlimited).unwrap(), Usage::default());
    }

    #[test]
    fn a_folder_renamed_round_and_round_as_it_is_walked_is_found_or_the_sum_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        std::fs::create_dir_all(job.join("h0")).unwrap();
        std::fs::write(job.join("h0/big"), vec![5u8; 4 << 20]).unwrap();
        std::fs::write(job.join("file0"), vec![6u8; 4 << 20]).unwrap();
        // An agent renaming a folder and a file as fast as it can, so that a name listed is gone when read.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renamer = {
            let (job, stop) = (job.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(job.join(format!("h{n}")), job.join(format!("h{}", n + 1)))
                        .unwrap();
                    std::fs::rename(
                        job.join(format!("file{n}")),
                        job.join(format!("file{}", n + 1)),
                    )
                    .unwrap();
                    n += 1;
                }
            })
        };
        let unlimited = Usage {
            bytes: u64::MAX,
            entries: u64::MAX,
            unsettled: false,
        };
        let mut unsettled = 0;
        for _ in 0..50 {
            let used = usage(std::slice::from_ref(&job), unlimited).unwrap();
            if used.unsettled {
                unsettled += 1;
            } else {
                assert!(used.bytes >= 8 << 20, "{used:?}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        renamer.join().unwrap();
        // Once the renaming stops, the whole is counted and settled.
        let used = usage(std::slice::from_ref(&job), unlimited).unwrap();
        assert!(
            !used.unsettled && used.bytes >= 8 << 20,
            "{used:?} ({unsettled} unsettled)"
        );
    }

    #[test]
    fn regular_files_are_read_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f.md"), "hello").unwrap();
        let got = read_beneath(dir.path(), "a/b/f.md", 3).unwrap().unwrap();
        assert_eq!((got.bytes.as_slice(), got.truncated), (&b"hel"[..], true));
        let got = read_beneath(dir.path(), "./a/b/f.md", 5).unwrap().unwrap();
        assert_eq!(
            (got.bytes.as_slice(), got.truncated),
            (&b"hello"[..], false)
        );
        assert!(
            read_beneath(dir.path(), "a/missing.md", 5)
                .unwrap()
                .is_none()
        );
        assert!(read_beneath(dir.path(), "nope/f.md", 5).unwrap().is_none());
        assert!(
            read_beneath(&dir.path().join("gone"), "f.md", 5)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn links_anywhere_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("f.md"), "secret").unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        symlink(secret.join("f.md"), base.join("link.md")).unwrap();
        symlink(&secret, base.join("sub")).unwrap();
        symlink("/proc/self/environ", base.join("environ.md")).unwrap();
        let e = read_beneath(&base, "link.md", 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "link.md is a symlink; nightshift reads only regular files"
        );
        let e = read_beneath(&base, "environ.md", 100).unwrap_err();
        assert!(matches!(e, Refused::Symlink(_)), "{e}");
        let e = read_beneath(&base, "sub/f.md", 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sub is a symlink; nightshift reads only regular files"
        );
        // The folder itself replaced by a link.
        let linked = dir.path().join("output");
        symlink(&secret, &linked).unwrap();
        let e = read_beneath(&linked, "f.md", 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the output folder is a symlink; nightshift reads only regular files"
        );
        assert!(matches!(
            read_beneath(&base, "../secret/f.md", 100),
            Err(Refused::BadPath(_))
        ));
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("message.md");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open or read would hang this test.
        let e = read_beneath(dir.path(), "message.md", 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "message.md is a FIFO; nightshift reads only regular files"
        );
        let e = read_beneath(Path::new("/dev"), "zero", 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "zero is a character device; nightshift reads only regular files"
        );
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(
            read_beneath(dir.path(), "d", 100),
            Err(Refused::NotRegular(_, "a folder"))
        ));
    }

    #[test]
    fn a_huge_sparse_file_costs_only_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("big")).unwrap();
        f.set_len(3 << 30).unwrap();
        let got = read_beneath(dir.path(), "big", 1024).unwrap().unwrap();
        assert_eq!((got.bytes.len(), got.truncated), (1024, true));
        assert!(got.bytes.capacity() < 1 << 21);
    }

    /// A folder chain `depth` deep under `base`, made with `mkdirat` from the folder above (a path that
    /// long is past PATH_MAX), with a file at the bottom.
    fn deep_tree(base: &Path, depth: usize) {
        let name = CString::new("d").unwrap();
        let mut fd = File::open(base).unwrap();
        for _ in 0..depth {
            // SAFETY: mkdirat and openat on an open folder and a NUL-terminated name.
            unsafe {
                assert_eq!(libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755), 0);
                let next = libc::openat(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                assert!(next >= 0);
                fd = File::from_raw_fd(next);
            }
        }
        let file = CString::new("bottom").unwrap();
        // SAFETY: as above.
        unsafe {
            let f = libc::openat(
                fd.as_raw_fd(),
                file.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            );
            assert!(f >= 0);
            libc::close(f);
        }
    }

    #[test]
    fn a_tree_deeper_than_a_thread_stack_allows_recursion_into_is_removed_on_a_small_stack() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        deep_tree(&home, 20_000);
        std::fs::write(home.join("top.txt"), "x").unwrap();
        // A runtime thread's stack (2 MiB): `std::fs::remove_dir_all` aborted the process on it at 15,000.
        let removed = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn({
                let home = home.clone();
                move || remove_tree(&home)
            })
            .unwrap()
            .join()
            .unwrap();
        removed.unwrap();
        assert!(!home.exists());
        assert_eq!(
            remove_tree(&home).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn removing_a_tree_follows_no_link_and_opens_closed_folders() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep.txt"), "keep").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/f"), "x").unwrap();
        // Names like the ones the removal moves folders up under.
        std::fs::create_dir_all(tree.join(".removing-1/x")).unwrap();
        std::fs::write(tree.join(".removing-2"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/b/c/link")).unwrap();
        std::fs::set_permissions(tree.join("a/b"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep.txt")).unwrap(),
            "keep"
        );
        // A link itself is removed, not what it points at; a file is removed.
        std::os::unix::fs::symlink(&outside, dir.path().join("link")).unwrap();
        remove_tree(&dir.path().join("link")).unwrap();
        assert!(outside.join("keep.txt").exists());
    }
}
