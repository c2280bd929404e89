//! Workspaces: one bare mirror per repository under the data dir, cloned once and fetched after (under a
//! per-repository lock), and one `git worktree` per job at the exact commit, removed when the job ends.
//!
//! The mirror is nightshift's: its config is nightshift's own (checked, and restored if it changed,
//! before every use), and every git command runs through the hardened [`Git`]. After the agent, the
//! worktree is only ever read as files: its changes are added to a private index of nightshift's own
//! against the mirror (`--git-dir=<mirror> --work-tree=<worktree>`), committed and pushed from the
//! mirror, so nothing the agent wrote in `.git`, `commondir` or the worktree's git folder is ever used.
//! What the repository says about itself (`AGENTS.md`, skills, triggers) is read as blobs from the
//! default branch's tree: regular files only, never symlinks or submodules.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::sync::Mutex;

use super::git::{Git, GitAuth, GitPolicy, Repo};
use crate::ids::{JobId, RepoName};

/// The mirror's whole config: nothing in it names a program, a filter, an include or another folder.
const MIRROR_CONFIG: &str =
    "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n";

/// Files a mirror never has unless someone planted them: each would make git read another folder's
/// repository (`commondir`, alternates), other config (`config.worktree`) or rewrite history (grafts).
const PLANTED: &[&str] = &[
    "commondir",
    "gitdir",
    "config.worktree",
    "objects/info/alternates",
    "info/grafts",
    "info/attributes",
];

/// A repository file larger than this is not copied into a job (a hostile default branch cannot make
/// the service read gigabytes).
const MAX_FILE: u64 = 8 * 1024 * 1024;
/// Nor more than this in all.
const MAX_TOTAL: u64 = 64 * 1024 * 1024;

pub struct Workspaces {
    root: PathBuf,
    git: Arc<Git>,
    locks: std::sync::Mutex<HashMap<RepoName, Arc<Mutex<()>>>>,
    /// What each repository last fetched, and what its default branch says about itself at one commit.
    seen: std::sync::Mutex<HashMap<RepoName, Seen>>,
    /// Each repository's spare worktree (see [`Spare`]), when one is ready or being made.
    spares: std::sync::Mutex<HashMap<RepoName, Arc<Mutex<Option<Spare>>>>>,
    /// Names this process's spares apart from a run before it (`PID-NANOS-N`).
    spare_token: String,
    spare_seq: std::sync::atomic::AtomicU64,
    spares_swept: tokio::sync::OnceCell<()>,
}

/// A worktree nightshift checked out ahead of a repository's next job, at its default branch's tip, so that
/// the job's wait is a `reset --hard` of the files that differ rather than a whole checkout. It lives in
/// `git/spares/NAME/` (its files in `tree`, its git folder in `git`): in the data dir, which every box
/// hides, and never in `worktrees/` or the mirror, which a job's box shows. It is nightshift's alone until
/// one job takes it (out of the map, under its lock), and that job's worktree is removed at its end like any
/// other: a worktree an agent used is never handed to another job.
struct Spare {
    dir: PathBuf,
    commit: String,
    /// Its files as they were once settled ([`fingerprint`], keyed by `key`). A spare found otherwise when
    /// a job takes it is not used; one found so, at the job's commit, needs no `reset` (its index already
    /// matches them).
    settled: u64,
    key: std::hash::RandomState,
}

/// What `lstat` says of every entry under `root` and of `root` itself (links not followed), with its path,
/// hashed in path order with `key` (a secret random key: no one can make two folders hash alike on
/// purpose). The change time is set by the kernel on every write, rename, link and attribute change, and no
/// process can set it back.
fn fingerprint(root: &Path, key: &std::hash::RandomState) -> std::io::Result<u64> {
    use std::hash::BuildHasher;
    use std::os::unix::fs::MetadataExt;
    type Stamp = (PathBuf, u64, u32, u64, i64, i64, i64, i64);
    let stamp = |path: &Path, m: &std::fs::Metadata| -> Stamp {
        (
            path.strip_prefix(root).unwrap_or(path).to_owned(),
            m.ino(),
            m.mode(),
            m.size(),
            m.ctime(),
            m.ctime_nsec(),
            m.mtime(),
            m.mtime_nsec(),
        )
    };
    let mut stamps = vec![stamp(root, &std::fs::symlink_metadata(root)?)];
    for_each_entry(root, |_, entry| {
        stamps.push(stamp(&entry.path(), &entry.metadata()?));
        Ok(())
    })?;
    stamps.sort_unstable();
    Ok(key.hash_one(&stamps))
}

/// What a spare's git folder may hold: the files nightshift wrote and the ones `reset --hard` writes.
const SPARE_GIT_FILES: &[&str] = &[
    "HEAD",
    "commondir",
    "gitdir",
    "index",
    "refs",
    "ORIG_HEAD",
    "logs",
];

/// What a repository's mirror is known to hold, kept between jobs to spare git processes. Nothing here
/// outlives the commit it names: a commit id names immutable content.
#[derive(Default)]
struct Seen {
    /// When the last fetch (or clone) that completed began: a job that asked for the mirror before then
    /// finds the remote as it was after its event.
    fetch_began: Option<std::time::Instant>,
    /// The tip a job's checkout resolved for a branch, after its fetch: (branch, commit).
    tip: Option<(String, String)>,
    /// The default branch's context (`AGENTS.md`, skills) as read at one commit.
    context: Option<Arc<CachedContext>>,
}

/// The regular files [`Workspaces::export_context`] writes, as read from one commit.
struct CachedContext {
    commit: String,
    /// (path, contents, executable)
    files: Vec<(String, Vec<u8>, bool)>,
    agents_md: Vec<String>,
    skipped: Vec<Skipped>,
}

impl CachedContext {
    fn size(&self) -> usize {
        self.files.iter().map(|(p, c, _)| p.len() + c.len()).sum()
    }
}

/// The most the default branches' contexts kept between jobs may hold, all repositories together.
const MAX_CACHED_CONTEXT: usize = 16 * 1024 * 1024;

/// A job's worktree; call [`Worktree::remove`] when the job ends.
pub struct Worktree {
    pub path: PathBuf,
    pub commit: String,
    /// The repository's default branch, as the mirror's HEAD names it.
    pub default_branch: String,
    /// The worktree's own git folder (index, HEAD) inside the mirror, as it was before the agent ran.
    pub git_dir: PathBuf,
    repo: RepoName,
    mirror: PathBuf,
    /// nightshift's own folder for this job's git work (a private index, excludes); never the agent's.
    private: PathBuf,
    job: JobId,
    git: Arc<Git>,
    /// The repository's lock: git's worktree bookkeeping in the mirror is not safe to change concurrently
    /// (removing the last worktree deletes the folder another `worktree add` is writing into).
    lock: Arc<Mutex<()>>,
    /// Where [`Worktree::remove`] moves the worktree before deleting it (named as the spares are, so a
    /// run that died leaves nothing the next one does not sweep).
    trash: PathBuf,
}

/// The commit a job is for is not in the repository after a fetch: a pull request's head GitHub has not
/// served yet (worth waiting a little for), or one force-pushed away.
#[derive(Debug)]
pub struct MissingCommit {
    pub repo: String,
    pub commit: String,
}

impl fmt::Display for MissingCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has no commit {} (not yet, or no longer)",
            self.repo, self.commit
        )
    }
}

impl std::error::Error for MissingCommit {}

/// Which commit a job works on.
pub enum Checkout<'a> {
    /// A branch of the repository (the default branch for issue events); empty for the default branch
    /// whatever its name.
    Branch(&'a str),
    /// An exact commit (a pull request's head).
    Commit(&'a str),
}

/// A repository file not copied because it is not a regular file (or is too large).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub why: SkipReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    Symlink,
    Submodule,
    TooLarge(u64),
    BadPath,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why {
            SkipReason::Symlink => write!(f, "skipped symlink {}", self.path),
            SkipReason::Submodule => write!(f, "skipped submodule {}", self.path),
            SkipReason::TooLarge(size) => write!(
                f,
                "skipped {} ({size} bytes, more than {MAX_FILE} per file or {MAX_TOTAL} in all)",
                self.path
            ),
            SkipReason::BadPath => write!(f, "skipped {} (not a plain path)", self.path),
        }
    }
}

/// What [`Workspaces::export_context`] copied.
pub struct ExportedContext {
    /// The default branch's commit it was read from.
    pub commit: String,
    /// The `AGENTS.md` paths copied.
    pub agents_md: Vec<String>,
    /// Entries left out (symlinks, submodules, files too large): one job-log line each.
    pub skipped: Vec<Skipped>,
}

/// A checkout of a tree for the verify steps ([`Worktree::check_out_for_verify`]); removed with
/// [`VerifyTree::remove`] (or with its worktree).
pub struct VerifyTree {
    pub path: PathBuf,
    /// Its git folder, a repository of its own in nightshift's private folder for the attempt (never one
    /// of the mirror's worktrees: the mirror's `gc` reads every worktree's index, and this one's names
    /// objects the mirror does not have): `HEAD` the job's commit, the mirror's branches and tags, its
    /// objects the quarantine [`Worktree::trial_objects`] with the mirror's as an alternate. The steps'
    /// box shows it read-only.
    pub git_dir: PathBuf,
    /// The tree checked out.
    pub tree: String,
    /// Each file of the tree as the checkout wrote it.
    files: std::sync::Arc<Vec<(PathBuf, Stamp)>>,
    git: Arc<Git>,
}

/// The agent's work, as nightshift committed it in the mirror.
pub struct Changes {
    /// The commit (on top of the job's commit, authored by nightshift); `None` when nothing changed.
    pub commit: Option<String>,
    /// `diff --stat` of the commit, for the job log.
    pub stat: String,
    /// Nested repositories the agent left in the worktree, left out of the commit.
    pub nested: Vec<String>,
}

impl Workspaces {
    pub fn new(data_dir: &Path, policy: GitPolicy) -> Workspaces {
        let root = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        Workspaces {
            git: Arc::new(Git::new(policy, root.join("git").join("home"))),
            root,
            locks: std::sync::Mutex::new(HashMap::new()),
            seen: std::sync::Mutex::new(HashMap::new()),
            spares: std::sync::Mutex::new(HashMap::new()),
            spare_token: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            spare_seq: std::sync::atomic::AtomicU64::new(0),
            spares_swept: tokio::sync::OnceCell::new(),
        }
    }

    fn spare_slot(&self, repo: &RepoName) -> Arc<Mutex<Option<Spare>>> {
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        spares.entry(repo.clone()).or_default().clone()
    }

    fn spares_dir(&self) -> PathBuf {
        self.root.join("git").join("spares")
    }

    /// A new folder name among the spares, this run's own (`PID-NANOS-N`).
    fn spare_dir(&self) -> PathBuf {
        let seq = self
            .spare_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.spares_dir()
            .join(format!("{}-{seq}", self.spare_token))
    }

    /// Checks out a spare worktree for `repo`'s next job at its default branch's tip, unless one is ready
    /// (or being made). Meant to run in the background after a job's worktree is ready; a job that comes
    /// while it is being made checks out its own.
    pub async fn refill_spare(&self, repo: &RepoName) -> Result<()> {
        let slot = self.spare_slot(repo);
        let mut slot = slot.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        self.spares_swept
            .get_or_init(|| sweep_spares(self.spares_dir(), self.spare_token.clone()))
            .await;
        let mirror = self.mirror_path(repo);
        let commit = {
            let lock = self.lock(repo);
            let _guard = lock.lock().await;
            if !mirror.join("HEAD").exists() {
                return Ok(());
            }
            check_mirror(repo, &mirror).await?;
            let branch = default_branch(&self.git, &mirror).await;
            match local_branch(&mirror, &branch).await {
                Some(commit) => commit,
                None => return Ok(()),
            }
        };
        let dir = self.spare_dir();
        let key = std::hash::RandomState::new();
        let settled = match make_spare(&self.git, &mirror, &dir, &commit, &key).await {
            Ok(settled) => settled,
            Err(e) => {
                let _ = crate::safe_fs::remove_tree_async(&dir).await;
                return Err(e.context(format!("checking out a spare worktree of {repo}")));
            }
        };
        *slot = Some(Spare {
            dir,
            commit,
            settled,
            key,
        });
        Ok(())
    }

    /// Takes `repo`'s spare when one is ready. One still being made is not waited for: on a busy machine
    /// its checkout can take longer than the job's own.
    fn take_spare(&self, repo: &RepoName) -> Option<Spare> {
        self.spare_slot(repo).try_lock().ok()?.take()
    }

    /// Puts back a spare a job took but did not use (it failed before its worktree was made): untouched.
    async fn give_back_spare(&self, repo: &RepoName, spare: Spare) {
        let slot = self.spare_slot(repo);
        let mut slot = slot.lock().await;
        if slot.is_none() {
            *slot = Some(spare);
        } else {
            let _ = crate::safe_fs::remove_tree_async(&spare.dir).await;
        }
    }

    fn seen<T>(&self, repo: &RepoName, f: impl FnOnce(&mut Seen) -> T) -> T {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        f(seen.entry(repo.clone()).or_default())
    }

    /// Brings the mirror up to date, unless a fetch that began after `asked` already did (jobs that
    /// arrive together share one fetch). The caller holds the repository's lock.
    async fn refresh(
        &self,
        repo: &RepoName,
        mirror: &Path,
        clone_url: &str,
        auth: &GitAuth,
        asked: std::time::Instant,
    ) -> Result<()> {
        if self.seen(repo, |s| s.fetch_began.is_some_and(|began| began >= asked))
            && mirror.join("HEAD").exists()
        {
            return check_mirror(repo, mirror).await;
        }
        let began = std::time::Instant::now();
        let fetched = update_mirror(&self.git, repo, mirror, clone_url, auth).await;
        self.seen(repo, |s| {
            // A failed fetch vouches for nothing.
            s.fetch_began = fetched.is_ok().then_some(began);
            s.tip = None;
        });
        fetched
    }

    fn mirror_path(&self, repo: &RepoName) -> PathBuf {
        self.root
            .join("mirrors")
            .join(repo.owner())
            .join(format!("{}.git", repo.name()))
    }

    /// Each attempt at a job has its own worktree (and private folder): a worker that lost its job never
    /// touches the tree of the worker that took it over, nor the other way round.
    fn worktree_path(&self, job: JobId, attempt: u32) -> PathBuf {
        self.root
            .join("worktrees")
            .join(format!("job-{job}-{attempt}"))
    }

    fn private_path(&self, job: JobId, attempt: u32) -> PathBuf {
        self.root
            .join("git")
            .join("jobs")
            .join(format!("job-{job}-{attempt}"))
    }

    fn lock(&self, repo: &RepoName) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(repo.clone()).or_default().clone()
    }

    /// What `commit` (one nightshift built, in the repository's mirror) changes against its parent, for the
    /// output policy; works after the job's worktree is gone.
    pub async fn measure_commit(
        &self,
        repo: &RepoName,
        commit: &str,
        max_files: u64,
        max_lines: u64,
    ) -> Result<crate::repo::git::CommitChanges> {
        let mirror = self.mirror_path(repo);
        check_mirror(repo, &mirror).await?;
        crate::repo::git::measure_commit(&self.git, &mirror, commit, max_files, max_lines).await
    }

    /// Brings the mirror up to date and adds a worktree for attempt `attempt` at `job` at the commit
    /// `checkout` names.
    pub async fn prepare(
        &self,
        repo: &RepoName,
        clone_url: &str,
        checkout: Checkout<'_>,
        job: JobId,
        attempt: u32,
        auth: &GitAuth,
    ) -> Result<Worktree> {
        let mut spare = self.take_spare(repo);
        let prepared = self
            .prepare_with(repo, clone_url, checkout, job, attempt, auth, &mut spare)
            .await;
        if let Some(spare) = spare {
            self.give_back_spare(repo, spare).await;
        }
        prepared
    }

    /// [`Workspaces::prepare`], with the repository's spare worktree if it has one: taken out of `spare`
    /// when used (a failed job before that leaves it there, untouched).
    #[allow(clippy::too_many_arguments)]
    async fn prepare_with(
        &self,
        repo: &RepoName,
        clone_url: &str,
        checkout: Checkout<'_>,
        job: JobId,
        attempt: u32,
        auth: &GitAuth,
        spare: &mut Option<Spare>,
    ) -> Result<Worktree> {
        let git = &self.git;
        let mirror = self.mirror_path(repo);
        let path = self.worktree_path(job, attempt);
        let private = self.private_path(job, attempt);
        let lock = self.lock(repo);
        let asked = std::time::Instant::now();
        // For a branch, the remote is asked for its tip at once (one `ls-remote`, a round trip to GitHub):
        // nothing before the checkout needs the answer. Not awaited (a fetch instead): dropped, stopped.
        let mut early_tip = tokio::task::JoinSet::new();
        let early_name = match checkout {
            Checkout::Branch(branch) if mirror.join("HEAD").exists() => {
                let name = if branch.is_empty() {
                    default_branch(git, &mirror).await
                } else {
                    branch.to_owned()
                };
                let (git, repo, mirror) = (self.git.clone(), repo.clone(), mirror.clone());
                let (url, asked_name, auth) = (clone_url.to_owned(), name.clone(), auth.clone());
                early_tip.spawn(async move {
                    remote_tip_of(&git, &repo, &mirror, &url, &asked_name, &auth).await
                });
                Some(name)
            }
            _ => None,
        };
        let guard = lock.lock().await;
        // A worktree left behind by a run that died is replaced (and git forgets it); otherwise there is
        // nothing for `worktree prune` to do (every job's end removes its worktree's git folder).
        let leftover = tokio::fs::symlink_metadata(&path).await.is_ok();
        remove_worktree_files(&mirror, &path, None, Some(&private)).await;
        if leftover {
            git.cmd(Repo::Bare(&mirror))
                .args(["worktree", "prune"])
                .run()
                .await?;
        }
        // For a branch the mirror holds, the remote is asked for its tip (one `ls-remote`) while the
        // worktree is brought to the mirror's: usually they agree, and neither waited for the other. A
        // branch that moved, or one the remote cannot say, is fetched then, and the worktree moved on.
        let mut ask_remote: Option<(&str, String)> = None;
        let commit = match checkout {
            Checkout::Commit(sha) => {
                if !is_object_id(sha) {
                    bail!("`{}` is not a commit id", sha.escape_debug());
                }
                // A commit the mirror already holds is the commit the event names (its id is its
                // content): no fetch. A missing one is always fetched.
                let mut present = mirror.join("HEAD").exists() && {
                    check_mirror(repo, &mirror).await?;
                    has_commit(git, &mirror, sha).await
                };
                if !present {
                    self.refresh(repo, &mirror, clone_url, auth, asked).await?;
                    present = has_commit(git, &mirror, sha).await;
                }
                if !present {
                    return Err(MissingCommit {
                        repo: repo.to_string(),
                        commit: sha.to_owned(),
                    }
                    .into());
                }
                sha.to_owned()
            }
            Checkout::Branch(branch) => {
                // Jobs that arrive together share one fetch.
                let fetched = self.seen(repo, |s| s.fetch_began.is_some_and(|b| b >= asked));
                let local = if mirror.join("HEAD").exists() && !fetched {
                    check_mirror(repo, &mirror).await?;
                    let name = if branch.is_empty() {
                        default_branch(git, &mirror).await
                    } else {
                        branch.to_owned()
                    };
                    local_branch(&mirror, &name).await.map(|tip| (name, tip))
                } else {
                    None
                };
                match local {
                    Some((name, tip)) => {
                        ask_remote = Some((branch, name));
                        tip
                    }
                    None => {
                        self.refresh(repo, &mirror, clone_url, auth, asked).await?;
                        let tip = branch_tip(git, repo, &mirror, branch).await?;
                        self.seen(repo, |s| s.tip = Some((branch.to_owned(), tip.clone())));
                        tip
                    }
                }
            }
        };
        tokio::fs::create_dir_all(path.parent().context("worktree path has no parent")?).await?;
        // Only the bookkeeping happens under the lock; the checkout itself (the slow part on a large
        // repository) runs after it is released, so jobs on one repository wait for each other only for
        // the fetch.
        // A spare at the job's commit is ready as it is: its files and index are as its own `reset` and
        // refresh left them (its fingerprint says so), and a second `reset` would only read them again.
        let (adopted, ready) = match spare.take() {
            Some(taken) => match adopt_spare(taken, &mirror, &path, &commit).await {
                Ok((from, ready)) => {
                    tracing::debug!(%repo, "the spare worktree at {from} moves to {commit}");
                    (true, ready)
                }
                Err(e) => {
                    tracing::warn!(%repo, "the spare worktree was not used: {e:#}");
                    remove_worktree_files(&mirror, &path, None, Some(&private)).await;
                    (false, false)
                }
            },
            None => (false, false),
        };
        if !adopted {
            add_worktree(&mirror, &path, &commit)
                .await
                .with_context(|| format!("adding a worktree at {commit} of {repo}"))?;
        }
        let default_branch = default_branch(git, &mirror).await;
        // The worktree's git folder, captured now, before any agent could touch the `.git` file.
        let git_dir = captured_git_dir(&mirror, &path).await?;
        drop(guard);
        let mut worktree = Worktree {
            path,
            commit,
            default_branch,
            git_dir,
            repo: repo.clone(),
            mirror,
            private,
            job,
            git: self.git.clone(),
            lock,
            trash: self.spare_dir(),
        };
        let remote_tip = async {
            let (_, name) = ask_remote.as_ref()?;
            if early_name.as_ref() == Some(name)
                && let Some(joined) = early_tip.join_next().await
            {
                return Some(joined.map_err(anyhow::Error::from).and_then(|tip| tip));
            }
            Some(self.remote_tip(repo, clone_url, name, auth).await)
        };
        let checked_out = async {
            if ready {
                Ok(())
            } else {
                check_out(&worktree).await
            }
        };
        let (checked_out, remote_tip) = tokio::join!(checked_out, remote_tip);
        if let Err(e) = checked_out {
            let commit = worktree.commit.clone();
            let _ = worktree.remove().await;
            return Err(e.context(format!("checking out {commit} of {repo}")));
        }
        if let (Some((branch, name)), Some(remote_tip)) = (ask_remote, remote_tip) {
            let unmoved = match remote_tip {
                Ok(Some(remote)) => remote.eq_ignore_ascii_case(&worktree.commit),
                Ok(None) => false,
                Err(e) => {
                    tracing::debug!(%repo, "asking for the tip of {name} failed ({e:#}); fetching");
                    false
                }
            };
            if !unmoved
                && let Err(e) = self
                    .move_on(&mut worktree, clone_url, branch, auth, asked)
                    .await
            {
                let _ = worktree.remove().await;
                return Err(e);
            }
            self.seen(repo, |s| {
                s.tip = Some((branch.to_owned(), worktree.commit.clone()))
            });
        }
        // The index as the checkout left it (with the files' stat data), kept where the agent cannot
        // reach: adding the agent's changes then reads only the files it touched, not the whole tree.
        tokio::fs::create_dir_all(&worktree.private)
            .await
            .with_context(|| format!("creating {}", worktree.private.display()))?;
        if let Err(e) = copy_index(
            worktree.git_dir.join("index"),
            worktree.private.join("index.base"),
        )
        .await
        {
            tracing::debug!("no index to start from ({e}); the changes will be read from scratch");
        }
        Ok(worktree)
    }

    /// The branch a worktree was checked out for moved on the remote (or the remote could not say): the
    /// mirror is fetched (under the repository's lock, shared with the jobs asking with it) and the
    /// worktree brought to the branch's new tip.
    async fn move_on(
        &self,
        worktree: &mut Worktree,
        clone_url: &str,
        branch: &str,
        auth: &GitAuth,
        asked: std::time::Instant,
    ) -> Result<()> {
        let repo = worktree.repo.clone();
        let tip = {
            let _guard = worktree.lock.lock().await;
            self.refresh(&repo, &worktree.mirror, clone_url, auth, asked)
                .await?;
            branch_tip(&self.git, &repo, &worktree.mirror, branch).await?
        };
        if tip == worktree.commit {
            return Ok(());
        }
        tokio::fs::write(worktree.git_dir.join("HEAD"), format!("{tip}\n"))
            .await
            .with_context(|| format!("writing {}/HEAD", worktree.git_dir.display()))?;
        worktree.commit = tip;
        check_out(worktree)
            .await
            .with_context(|| format!("checking out {} of {repo}", worktree.commit))
    }
}

/// Brings a worktree's files and index to its `HEAD` (the commit nightshift wrote there): `reset --hard`,
/// which writes only the files that differ.
async fn check_out(worktree: &Worktree) -> Result<()> {
    worktree
        .git
        .cmd(Repo::Work {
            git_dir: &worktree.git_dir,
            work_tree: &worktree.path,
        })
        // Files written by a few processes at once (git's parallel checkout, for trees of 100 files
        // or more): the checkout is most of the wait between an event and its agent.
        .config(format!("checkout.workers={}", checkout_workers()))
        .args(["reset", "--hard", "--quiet"])
        .run()
        .await
        .map(drop)
}

/// How many processes write a checkout's files: the machine's cores, at most four (past that, starting
/// them costs more than they save on a repository's tree).
fn checkout_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Copies an index file with its modification time: git trusts an entry's stat data only when the file
/// is older than the index (an entry as new as the index is "racily clean" and read again), so a copy
/// with a fresh time would make a change written in the checkout's instant look unchanged.
async fn copy_index(from: PathBuf, to: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let modified = std::fs::metadata(&from)?.modified()?;
        std::fs::copy(&from, &to)?;
        std::fs::File::options()
            .write(true)
            .open(&to)?
            .set_modified(modified)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Whether the mirror holds `sha` as a commit.
async fn has_commit(git: &Git, mirror: &Path, sha: &str) -> bool {
    git.cmd(Repo::Bare(mirror))
        .args([
            "cat-file",
            "-e",
            "--end-of-options",
            &format!("{sha}^{{commit}}"),
        ])
        .run()
        .await
        .is_ok()
}

/// The branch the mirror's HEAD names (the remote's default branch when it was cloned): read from the
/// `HEAD` file when it is the plain `ref: refs/heads/NAME` git writes, else asked of git.
async fn default_branch(git: &Git, mirror: &Path) -> String {
    if let Ok(head) = tokio::fs::read_to_string(mirror.join("HEAD")).await
        && let Some(name) = head
            .strip_prefix("ref: refs/heads/")
            .and_then(|rest| rest.strip_suffix('\n'))
        && !name.is_empty()
        && !name.contains(['\n', '\r'])
    {
        return name.to_owned();
    }
    git.cmd(Repo::Bare(mirror))
        .args(["symbolic-ref", "--short", "HEAD"])
        .run()
        .await
        .map(|b| b.trim().to_owned())
        .unwrap_or_default()
}

/// Adds a worktree at `path` (which must not exist) detached at `commit`, without checking it out: the
/// files `git worktree add --detach --no-checkout` writes (the worktree's git folder `worktrees/NAME` in
/// the mirror with its `HEAD`, `commondir` and `gitdir`; the worktree's `.git` file), written here to
/// spare a git process per job. The caller holds the repository's lock and removed what a run that died
/// left under the same name.
async fn add_worktree(mirror: &Path, path: &Path, commit: &str) -> Result<()> {
    if !is_object_id(commit) {
        bail!("`{}` is not a commit id", commit.escape_debug());
    }
    let name = path.file_name().context("the worktree path has no name")?;
    let admin = mirror.join("worktrees").join(name);
    let files = [
        (admin.join("commondir"), "../..\n".to_owned()),
        (admin.join("gitdir"), format!("{}/.git\n", path_str(path)?)),
        (admin.join("HEAD"), format!("{commit}\n")),
        (
            path.join(".git"),
            format!("gitdir: {}\n", path_str(&admin)?),
        ),
    ];
    let (path, refs) = (path.to_owned(), admin.join("refs"));
    tokio::task::spawn_blocking(move || -> Result<()> {
        std::fs::create_dir_all(&refs).with_context(|| format!("creating {}", refs.display()))?;
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        for (file, text) in files {
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(())
    })
    .await?
}

/// Makes a spare worktree in `dir` at `commit`: its git folder (`dir/git`, whose `commondir` names the
/// mirror), its files (`dir/tree`), checked out with one process (it runs beside jobs).
async fn make_spare(
    git: &Git,
    mirror: &Path,
    dir: &Path,
    commit: &str,
    key: &std::hash::RandomState,
) -> Result<u64> {
    if !is_object_id(commit) {
        bail!("`{}` is not a commit id", commit.escape_debug());
    }
    let (tree, admin) = (dir.join("tree"), dir.join("git"));
    let files = [
        (admin.join("commondir"), format!("{}\n", path_str(mirror)?)),
        (admin.join("gitdir"), format!("{}/.git\n", path_str(&tree)?)),
        (admin.join("HEAD"), format!("{commit}\n")),
        (
            tree.join(".git"),
            format!("gitdir: {}\n", path_str(&admin)?),
        ),
    ];
    let (refs, made) = (admin.join("refs"), tree.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        std::fs::create_dir_all(&refs).with_context(|| format!("creating {}", refs.display()))?;
        std::fs::create_dir(&made).with_context(|| format!("creating {}", made.display()))?;
        for (file, text) in files {
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(())
    })
    .await??;
    git.cmd(Repo::Work {
        git_dir: &admin,
        work_tree: &tree,
    })
    .config("checkout.workers=1")
    .args(["reset", "--hard", "--quiet"])
    .run()
    .await?;
    // Settled: git trusts an index entry's stat data only when the file is older than the index (in
    // whole seconds), so the files just checked out, as new as their index, would be read and hashed
    // again by the job's `reset --hard`: most of its wait. Their times are set a few seconds back and the
    // index refreshed once, here, beside jobs rather than in one's way.
    let files = tree.clone();
    tokio::task::spawn_blocking(move || backdate_files(&files, SETTLED_AGE))
        .await?
        .with_context(|| format!("settling the spare in {}", tree.display()))?;
    git.cmd(Repo::Work {
        git_dir: &admin,
        work_tree: &tree,
    })
    .args(["update-index", "-q", "--refresh"])
    .run()
    .await?;
    let (dir, key) = (dir.to_owned(), key.clone());
    tokio::task::spawn_blocking(move || fingerprint(&dir, &key))
        .await?
        .context("reading the settled spare")
}

/// Calls `each` with every entry under `root` and the folder it is in; links are never followed.
fn for_each_entry(
    root: &Path,
    mut each: impl FnMut(&Path, &std::fs::DirEntry) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
            each(&dir, &entry)?;
        }
    }
    Ok(())
}

/// How far back a spare's files are set (see [`make_spare`]): past git's whole-second racy window.
const SETTLED_AGE: std::time::Duration = std::time::Duration::from_secs(3);

/// Sets the modification time of every regular file under `root` (the worktree's `.git` file and what
/// links point at excepted: links are never followed) to `age` ago.
fn backdate_files(root: &Path, age: std::time::Duration) -> std::io::Result<()> {
    let when = std::time::SystemTime::now() - age;
    for_each_entry(root, |dir, entry| {
        if entry.file_type()?.is_file() && !(dir == root && entry.file_name() == ".git") {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(entry.path())?
                .set_modified(when)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Moves a spare worktree to a job's place: its files to `path`, its git folder into the mirror's
/// `worktrees/`, with nightshift's own `HEAD` (the job's commit), `commondir`, `gitdir` and `.git` written
/// afresh. Returns the commit the spare was made at, and whether it is ready as it is (made at `commit`);
/// otherwise the caller's `reset --hard` brings its files to the job's commit. A spare whose files or git
/// folder changed after it was settled (its [`fingerprint`]) is refused and removed, as is one whose git
/// folder holds anything nightshift and git's `reset` do not write, or whose `.git` is not a plain file.
/// The caller holds the repository's lock and removed what a dead run left at `path`.
async fn adopt_spare(
    spare: Spare,
    mirror: &Path,
    path: &Path,
    commit: &str,
) -> Result<(String, bool)> {
    let adopted = adopt_spare_files(&spare, mirror, path, commit).await;
    if adopted.is_err() {
        let _ = crate::safe_fs::remove_tree_async(&spare.dir).await;
    }
    adopted.map(|ready| (spare.commit, ready))
}

async fn adopt_spare_files(
    spare: &Spare,
    mirror: &Path,
    path: &Path,
    commit: &str,
) -> Result<bool> {
    if !is_object_id(commit) {
        bail!("`{}` is not a commit id", commit.escape_debug());
    }
    let name = path.file_name().context("the worktree path has no name")?;
    let admin = mirror.join("worktrees").join(name);
    let (tree, git) = (spare.dir.join("tree"), spare.dir.join("git"));
    let (path, dir) = (path.to_owned(), spare.dir.clone());
    let (settled, key) = (spare.settled, spare.key.clone());
    let ready = spare.commit == commit;
    let commit = commit.to_owned();
    tokio::task::spawn_blocking(move || -> Result<bool> {
        if fingerprint(&dir, &key)? != settled {
            bail!("its files changed after it was made");
        }
        for entry in std::fs::read_dir(&git)? {
            let name = entry?.file_name();
            if !SPARE_GIT_FILES.iter().any(|f| name == *f) {
                bail!("its git folder holds `{}`", name.to_string_lossy());
            }
        }
        if !std::fs::symlink_metadata(tree.join(".git"))?.is_file() {
            bail!("its .git is not a file");
        }
        std::fs::write(git.join("HEAD"), format!("{commit}\n"))?;
        std::fs::write(git.join("commondir"), "../..\n")?;
        std::fs::write(git.join("gitdir"), format!("{}/.git\n", path_str(&path)?))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::create_dir_all(
            admin
                .parent()
                .context("the mirror has no worktrees folder")?,
        )?;
        std::fs::rename(&tree, &path)
            .with_context(|| format!("moving {} to {}", tree.display(), path.display()))?;
        std::fs::rename(&git, &admin)
            .with_context(|| format!("moving {} to {}", git.display(), admin.display()))?;
        let dot_git = path.join(".git");
        std::fs::remove_file(&dot_git)?;
        std::fs::write(&dot_git, format!("gitdir: {}\n", path_str(&admin)?))?;
        let _ = std::fs::remove_dir(&dir);
        Ok(ready)
    })
    .await?
}

/// Removes the spares a run before this one left (`git/spares/PID-NANOS-N`): every one not named with
/// `token`, unless its process still runs under another id (another nightshift on this data dir).
async fn sweep_spares(dir: PathBuf, token: String) {
    let _ = tokio::task::spawn_blocking(move || {
        let ours = std::process::id().to_string();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{token}-")) {
                continue;
            }
            let pid = name.split('-').next().unwrap_or_default();
            let alive = pid != ours && !pid.is_empty() && Path::new("/proc").join(pid).exists();
            if !alive {
                let _ = crate::safe_fs::remove_tree(&entry.path());
            }
        }
    })
    .await;
}

/// Reads the `.git` file `git worktree add` just wrote and checks that it names a folder of the mirror's.
async fn captured_git_dir(mirror: &Path, worktree: &Path) -> Result<PathBuf> {
    let text = tokio::fs::read_to_string(worktree.join(".git"))
        .await
        .with_context(|| format!("reading {}/.git", worktree.display()))?;
    let dir = text
        .strip_prefix("gitdir: ")
        .map(|d| PathBuf::from(d.trim_end_matches('\n')))
        .with_context(|| format!("{}/.git is not a gitdir file", worktree.display()))?;
    if !dir.starts_with(mirror.join("worktrees")) || dir.components().any(|c| c.as_os_str() == "..")
    {
        bail!(
            "the worktree's git folder {} is not in the mirror {}",
            dir.display(),
            mirror.display()
        );
    }
    Ok(dir)
}

/// Puts the mirror's config back to nightshift's and removes files that would make git read other
/// folders. Returns what it repaired (for a warning: someone wrote the mirror).
async fn secure_mirror(mirror: &Path) -> Result<Vec<String>> {
    let mut repaired = Vec::new();
    let config = mirror.join("config");
    let current = tokio::fs::read(&config).await.ok();
    let is_file = tokio::fs::symlink_metadata(&config)
        .await
        .is_ok_and(|m| m.is_file());
    if current.as_deref() != Some(MIRROR_CONFIG.as_bytes()) || !is_file {
        let fresh = mirror.join("config.nightshift");
        let _ = tokio::fs::remove_file(&fresh).await;
        tokio::fs::write(&fresh, MIRROR_CONFIG)
            .await
            .with_context(|| format!("writing {}", fresh.display()))?;
        let _ = crate::safe_fs::remove_tree_async(&config).await;
        tokio::fs::rename(&fresh, &config)
            .await
            .with_context(|| format!("restoring {}", config.display()))?;
        if current.is_some() {
            repaired.push("config".to_owned());
        }
    }
    for planted in PLANTED {
        let path = mirror.join(planted);
        if let Ok(meta) = tokio::fs::symlink_metadata(&path).await {
            if meta.is_dir() {
                crate::safe_fs::remove_tree_async(&path).await
            } else {
                tokio::fs::remove_file(&path).await
            }
            .with_context(|| format!("removing {}", path.display()))?;
            repaired.push((*planted).to_owned());
        }
    }
    Ok(repaired)
}

/// Checks the mirror and says (in the service log) what had to be repaired.
async fn check_mirror(repo: &RepoName, mirror: &Path) -> Result<()> {
    let repaired = secure_mirror(mirror).await?;
    if !repaired.is_empty() {
        tracing::warn!(
            %repo,
            "the mirror {} was not as nightshift keeps it (an older nightshift's config, or someone \
             changed it); restored: {}",
            mirror.display(),
            repaired.join(", ")
        );
    }
    Ok(())
}

/// Clones the mirror (into a temporary name, renamed when complete, so a crash mid-clone never leaves a
/// broken mirror) or fetches into it. The caller holds the repository's lock.
async fn update_mirror(
    git: &Git,
    repo: &RepoName,
    mirror: &Path,
    clone_url: &str,
    auth: &GitAuth,
) -> Result<()> {
    let url = git
        .remote(clone_url)
        .with_context(|| format!("reading {repo}"))?;
    if mirror.join("HEAD").exists() {
        check_mirror(repo, mirror).await?;
        git.cmd(Repo::Bare(mirror))
            .args([
                "fetch",
                "--prune",
                "--quiet",
                "--no-write-fetch-head",
                "--end-of-options",
                &url,
                // Not `refs/*`: `--prune` would delete nightshift's own refs
                // (`refs/nightshift/jobs/N/COMMIT`, the commits jobs made and have yet to push).
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
                "+refs/pull/*:refs/pull/*",
            ])
            .auth(auth)
            .run()
            .await
            .with_context(|| format!("fetching {repo}"))?;
        return Ok(());
    }
    let parent = mirror.parent().context("mirror path has no parent")?;
    tokio::fs::create_dir_all(parent)
        .await
        .with_context(|| format!("creating {}", parent.display()))?;
    let partial = mirror.with_extension("partial");
    let _ = crate::safe_fs::remove_tree_async(&partial).await;
    git.cmd(Repo::None)
        .args([
            "clone",
            "--mirror",
            "--quiet",
            "--template=",
            "--end-of-options",
            &url,
            path_str(&partial)?,
        ])
        .auth(auth)
        .run()
        .await
        .with_context(|| format!("cloning {repo}"))?;
    secure_mirror(&partial).await?;
    tokio::fs::rename(&partial, mirror)
        .await
        .with_context(|| format!("moving the new mirror into {}", mirror.display()))?;
    Ok(())
}

/// Files read from one commit of a repository.
pub struct FilesAt {
    pub commit: String,
    /// (path in the repository, contents), sorted by path.
    pub files: Vec<(String, String)>,
    /// Entries left out: symlinks, submodules, files too large.
    pub skipped: Vec<Skipped>,
}

/// One entry of `git ls-tree -l`.
struct Entry {
    mode: String,
    oid: String,
    size: u64,
    path: String,
}

/// Lists `commit`'s tree (recursively, or the entries directly in `dir` when given), with modes and
/// sizes. Paths that are not UTF-8 are left out.
async fn list_tree(
    git: &Git,
    mirror: &Path,
    commit: &str,
    dir: Option<&str>,
) -> Result<Vec<Entry>> {
    let mut cmd = git
        .cmd(Repo::Bare(mirror))
        .args(["ls-tree", "-z", "-l", "--full-tree"]);
    if dir.is_none() {
        cmd = cmd.arg("-r");
    }
    cmd = cmd.args(["--end-of-options", commit]);
    if let Some(dir) = dir {
        cmd = cmd.args(["--".to_owned(), format!("{dir}/")]);
    }
    let listing = cmd.output().await?;
    let mut entries = Vec::new();
    for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let Some(tab) = record.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let (Ok(meta), Ok(path)) = (
            std::str::from_utf8(&record[..tab]),
            std::str::from_utf8(&record[tab + 1..]),
        ) else {
            continue;
        };
        let mut fields = meta.split_whitespace();
        let (Some(mode), Some(_kind), Some(oid), Some(size)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        entries.push(Entry {
            mode: mode.to_owned(),
            oid: oid.to_owned(),
            size: size.parse().unwrap_or(0),
            path: path.to_owned(),
        });
    }
    Ok(entries)
}

/// Splits entries into the regular files to read and the ones skipped (symlinks, submodules, odd paths,
/// files past the size limits).
fn regular_files(entries: Vec<Entry>) -> (Vec<Entry>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut total = 0u64;
    for entry in entries {
        let why = match entry.mode.as_str() {
            "100644" | "100755" if !plain_path(&entry.path) => Some(SkipReason::BadPath),
            "100644" | "100755" if entry.size > MAX_FILE || total + entry.size > MAX_TOTAL => {
                Some(SkipReason::TooLarge(entry.size))
            }
            "100644" | "100755" => None,
            "120000" => Some(SkipReason::Symlink),
            "160000" => Some(SkipReason::Submodule),
            _ => continue,
        };
        match why {
            None => {
                total += entry.size;
                files.push(entry);
            }
            Some(why) => skipped.push(Skipped {
                path: entry.path,
                why,
            }),
        }
    }
    (files, skipped)
}

/// A relative path of plain names: no empty, `.`, `..` or `.git` component.
fn plain_path(path: &str) -> bool {
    !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.eq_ignore_ascii_case(".git"))
}

/// Reads blobs by id with one `git cat-file --batch`, in the order given.
async fn read_blobs(git: &Git, mirror: &Path, oids: &[&str]) -> Result<Vec<Vec<u8>>> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    for oid in oids {
        input.extend_from_slice(oid.as_bytes());
        input.push(b'\n');
    }
    let out = git
        .cmd(Repo::Bare(mirror))
        .args(["cat-file", "--batch"])
        .stdin(input)
        .output()
        .await?;
    let mut blobs = Vec::with_capacity(oids.len());
    let mut rest = &out[..];
    for oid in oids {
        let line_end = rest
            .iter()
            .position(|b| *b == b'\n')
            .context("git cat-file ended early")?;
        let header = std::str::from_utf8(&rest[..line_end]).unwrap_or_default();
        let mut fields = header.split(' ');
        let (Some(got), Some("blob"), Some(size)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("git cat-file did not return the blob {oid}: {header}");
        };
        anyhow::ensure!(got == *oid, "git cat-file returned {got} for {oid}");
        let size: usize = size.parse().context("git cat-file gave no size")?;
        let start = line_end + 1;
        anyhow::ensure!(rest.len() > start + size, "git cat-file ended early");
        blobs.push(rest[start..start + size].to_vec());
        rest = &rest[start + size + 1..];
    }
    Ok(blobs)
}

/// Writes a regular file at `dest/path`, never through a link (the folders are nightshift's own, fresh).
fn write_new(dest: &Path, path: &str, contents: &[u8], executable: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let target = dest.join(path);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .with_context(|| format!("creating {}", target.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", target.display()))
}

impl Workspaces {
    /// Brings the mirror up to date and reads the regular files directly in `dir` (not below) whose names
    /// end in one of `extensions`, from the tip of `branch` (the mirror's HEAD, the default branch, when
    /// empty). Never from anything but that branch: a pull request cannot change what this returns.
    /// Symlinks and submodules are skipped (and said in the service log).
    pub async fn read_files(
        &self,
        repo: &RepoName,
        clone_url: &str,
        branch: &str,
        dir: &str,
        extensions: &[&str],
        auth: &GitAuth,
    ) -> Result<FilesAt> {
        let git = &self.git;
        let mirror = self.mirror_path(repo);
        let lock = self.lock(repo);
        let asked = std::time::Instant::now();
        let _guard = lock.lock().await;
        self.refresh(repo, &mirror, clone_url, auth, asked).await?;
        let commit = branch_tip(git, repo, &mirror, branch).await?;
        let entries = list_tree(git, &mirror, &commit, Some(dir))
            .await?
            .into_iter()
            .filter(|e| extensions.iter().any(|x| e.path.ends_with(x)))
            .collect();
        let (wanted, skipped) = regular_files(entries);
        for s in &skipped {
            tracing::warn!(%repo, %commit, "{s}");
        }
        let oids: Vec<&str> = wanted.iter().map(|e| e.oid.as_str()).collect();
        let blobs = read_blobs(git, &mirror, &oids).await?;
        let mut files: Vec<(String, String)> = wanted
            .into_iter()
            .zip(blobs)
            .map(|(e, b)| (e.path, String::from_utf8_lossy(&b).into_owned()))
            .collect();
        files.sort();
        Ok(FilesAt {
            commit,
            files,
            skipped,
        })
    }

    /// Copies what the repository says about itself from the tip of its default branch (the mirror must be
    /// up to date: call after [`Workspaces::prepare`]) into `dest`: its `AGENTS.md` files and its skills
    /// (`.agents/skills/`, `.claude/skills/`). Never from the job's own commit, so a pull request cannot
    /// change the instructions or skills its own review runs with. Only regular files are written, read
    /// as blobs; symlinks and submodules are skipped and returned.
    pub async fn export_context(
        &self,
        repo: &RepoName,
        branch: &str,
        dest: &Path,
    ) -> Result<ExportedContext> {
        let git = &self.git;
        let mirror = self.mirror_path(repo);
        // The tip the job's own checkout resolved for this branch after its fetch, or the mirror's.
        let resolved = self.seen(repo, |s| {
            s.tip
                .as_ref()
                .filter(|(b, _)| b == branch)
                .map(|(_, tip)| tip.clone())
        });
        let commit = match resolved {
            Some(tip) => tip,
            None => branch_tip(git, repo, &mirror, branch).await?,
        };
        let cached = self.seen(repo, |s| s.context.clone().filter(|c| c.commit == commit));
        let context = match cached {
            Some(context) => context,
            None => {
                let context = Arc::new(self.read_context(&mirror, commit).await?);
                self.keep_context(repo, &context);
                context
            }
        };
        tokio::fs::create_dir_all(dest).await?;
        for (path, contents, executable) in &context.files {
            write_new(dest, path, contents, *executable)?;
        }
        Ok(ExportedContext {
            commit: context.commit.clone(),
            agents_md: context.agents_md.clone(),
            skipped: context.skipped.clone(),
        })
    }

    /// Keeps `context` as the repository's, within [`MAX_CACHED_CONTEXT`] for all repositories: a larger
    /// one is not kept, and when the total would pass it the others are dropped first.
    fn keep_context(&self, repo: &RepoName, context: &Arc<CachedContext>) {
        let size = context.size();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(repo.clone()).or_default();
        entry.context = None;
        if size > MAX_CACHED_CONTEXT {
            return;
        }
        let total: usize = seen
            .values()
            .filter_map(|s| s.context.as_ref())
            .map(|c| c.size())
            .sum();
        if total + size > MAX_CACHED_CONTEXT {
            for s in seen.values_mut() {
                s.context = None;
            }
        }
        seen.entry(repo.clone()).or_default().context = Some(context.clone());
    }

    /// Reads the default branch's context at `commit`: one `ls-tree`, one `cat-file --batch`.
    async fn read_context(&self, mirror: &Path, commit: String) -> Result<CachedContext> {
        let git = &self.git;
        let entries = list_tree(git, mirror, &commit, None)
            .await?
            .into_iter()
            .filter(|e| {
                e.path == "AGENTS.md"
                    || e.path.ends_with("/AGENTS.md")
                    || crate::skill::WORKTREE_ROOTS.iter().any(|root| {
                        e.path.starts_with(root) && e.path.as_bytes().get(root.len()) == Some(&b'/')
                    })
            })
            .collect();
        let (wanted, skipped) = regular_files(entries);
        let oids: Vec<&str> = wanted.iter().map(|e| e.oid.as_str()).collect();
        let blobs = read_blobs(git, mirror, &oids).await?;
        let mut agents_md = Vec::new();
        let mut files = Vec::with_capacity(wanted.len());
        for (entry, blob) in wanted.into_iter().zip(blobs) {
            if entry.path == "AGENTS.md" || entry.path.ends_with("/AGENTS.md") {
                agents_md.push(entry.path.clone());
            }
            files.push((entry.path, blob, entry.mode == "100755"));
        }
        Ok(CachedContext {
            commit,
            files,
            agents_md,
            skipped,
        })
    }

    /// The commit at the tip of `branch` on the remote, or None when the branch does not exist.
    pub async fn remote_tip(
        &self,
        repo: &RepoName,
        clone_url: &str,
        branch: &str,
        auth: &GitAuth,
    ) -> Result<Option<String>> {
        remote_tip_of(
            &self.git,
            repo,
            &self.mirror_path(repo),
            clone_url,
            branch,
            auth,
        )
        .await
    }

    /// Pushes job `job`'s commit `commit` (made by [`Worktree::commit_changes`], kept under the job's own ref
    /// in the mirror) to `branch` of the remote, only if the branch is still at `expect` (`None`: it must not
    /// exist): `--force-with-lease`, so commits someone else pushed are never erased. `auth` should be
    /// fresh: take it right before calling.
    #[allow(clippy::too_many_arguments)]
    pub async fn push(
        &self,
        repo: &RepoName,
        clone_url: &str,
        job: JobId,
        commit: &str,
        branch: &str,
        expect: Option<&str>,
        auth: &GitAuth,
    ) -> Result<()> {
        let url = self.git.remote(clone_url)?;
        check_branch_name(branch)?;
        if !is_object_id(commit) {
            bail!("`{}` is not a commit id", commit.escape_debug());
        }
        if let Some(sha) = expect
            && !is_object_id(sha)
        {
            bail!("`{}` is not a commit id", sha.escape_debug());
        }
        let mirror = self.mirror_path(repo);
        let lock = self.lock(repo);
        let _guard = lock.lock().await;
        check_mirror(repo, &mirror).await?;
        self.git
            .cmd(Repo::Bare(&mirror))
            .args([
                "push",
                "--quiet",
                "--no-verify",
                &format!(
                    "--force-with-lease=refs/heads/{branch}:{}",
                    expect.unwrap_or_default()
                ),
                "--end-of-options",
                &url,
                &format!("{}:refs/heads/{branch}", job_ref(job, commit)),
            ])
            .auth(auth)
            .run()
            .await
            .map(|_| ())
    }

    /// Whether job `job`'s commit is still in the mirror (a mirror cloned again has lost it).
    pub async fn has_job_commit(&self, repo: &RepoName, job: JobId, commit: &str) -> bool {
        if !is_object_id(commit) {
            return false;
        }
        let mirror = self.mirror_path(repo);
        self.git
            .cmd(Repo::Bare(&mirror))
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &job_ref(job, commit),
            ])
            .run()
            .await
            .is_ok_and(|out| out.trim() == commit)
    }

    /// Forgets job `job`'s commits (their refs in the mirror, one per attempt that made one), when the job
    /// has ended.
    pub async fn forget_job_commit(&self, repo: &RepoName, job: JobId) {
        let mirror = self.mirror_path(repo);
        if !mirror.join("HEAD").exists() {
            return;
        }
        let lock = self.lock(repo);
        let _guard = lock.lock().await;
        let Ok(refs) = self
            .git
            .cmd(Repo::Bare(&mirror))
            .args([
                "for-each-ref",
                "--format=%(refname)",
                "--end-of-options",
                &format!("refs/nightshift/jobs/{job}"),
            ])
            .run()
            .await
        else {
            return;
        };
        let deletes: String = refs
            .lines()
            .filter(|r| !r.is_empty())
            .map(|r| format!("delete {r}\n"))
            .collect();
        if deletes.is_empty() {
            return;
        }
        let _ = self
            .git
            .cmd(Repo::Bare(&mirror))
            .args(["update-ref", "--stdin"])
            .stdin(deletes.into_bytes())
            .run()
            .await;
    }

    /// The folders of attempt `attempt` at job `job` that its agent and its verify steps write in: the
    /// worktree and the steps' checkout beside it (nightshift's private folder is not among them).
    pub fn written_by_job(&self, job: JobId, attempt: u32) -> [PathBuf; 2] {
        let worktree = self.worktree_path(job, attempt);
        [verify_path(&worktree), worktree]
    }

    /// The attempts at job `job` whose worktree or private folder is still on disk.
    pub fn attempts_left(&self, job: JobId) -> Vec<u32> {
        let prefix = format!("job-{job}-");
        let mut attempts: Vec<u32> = [
            self.root.join("worktrees"),
            self.root.join("git").join("jobs"),
        ]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let attempt = name.to_str()?.strip_prefix(&prefix)?;
            // A checkout for the verify steps (`job-ID-ATTEMPT-verify`) is the attempt's too.
            attempt
                .strip_suffix("-verify")
                .unwrap_or(attempt)
                .parse()
                .ok()
        })
        .collect();
        attempts.sort_unstable();
        attempts.dedup();
        attempts
    }

    /// Removes the worktree of attempt `attempt` at job `job`, if one is left (the attempt was stopped
    /// before it could clean up).
    pub async fn discard(&self, repo: &RepoName, job: JobId, attempt: u32) -> Result<()> {
        let path = self.worktree_path(job, attempt);
        let mirror = self.mirror_path(repo);
        let lock = self.lock(repo);
        let _guard = lock.lock().await;
        let private = self.private_path(job, attempt);
        remove_worktree_files(&mirror, &verify_path(&path), None, None).await;
        remove_worktree_files(&mirror, &path, None, Some(&private)).await;
        if path.exists() {
            crate::safe_fs::remove_tree_async(&path)
                .await
                .with_context(|| format!("removing {}", path.display()))?;
        }
        if mirror.join("HEAD").exists() {
            self.git
                .cmd(Repo::Bare(&mirror))
                .args(["worktree", "prune"])
                .run()
                .await?;
        }
        Ok(())
    }
}

/// Deletes a worktree's files, its git folder in the mirror and nightshift's private folder for it,
/// without asking git (which would read the worktree's `.git` and git folder, both the agent's to
/// change). `remove_tree` removes links, never what they point at.
async fn remove_worktree_files(
    mirror: &Path,
    path: &Path,
    git_dir: Option<&Path>,
    private: Option<&Path>,
) {
    let _ = crate::safe_fs::remove_tree_async(path).await;
    let named = path
        .file_name()
        .map(|name| mirror.join("worktrees").join(name));
    for dir in git_dir.into_iter().map(Path::to_owned).chain(named) {
        let _ = crate::safe_fs::remove_tree_async(&dir).await;
    }
    if let Some(private) = private {
        let _ = crate::safe_fs::remove_tree_async(private).await;
    }
}

/// The (relative) folders below `root` that hold a `.git` of their own: repositories an agent made or
/// cloned inside the worktree. Never follows links.
fn nested_repositories(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut subdirs = Vec::new();
        let mut is_repo = false;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == ".git" {
                is_repo = true;
                continue;
            }
            if entry.file_type()?.is_dir() {
                subdirs.push(rel.join(name));
            }
        }
        if is_repo && !rel.as_os_str().is_empty() {
            found.push(rel);
        } else {
            stack.extend(subdirs);
        }
    }
    found.sort();
    Ok(found)
}

/// A gitignore line that matches exactly the folder `rel` (from the top of the work tree).
fn exclude_line(rel: &Path) -> Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = rel.as_os_str().as_bytes();
    if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
        bail!(
            "the worktree holds a repository at a path with a line break ({}); it cannot be left out",
            rel.display()
        );
    }
    let mut line = vec![b'/'];
    for b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b'\\' | b' ' | b'!' | b'#') {
            line.push(b'\\');
        }
        line.push(*b);
    }
    line.extend_from_slice(b"/\n");
    Ok(line)
}

/// Where the checkout for a worktree's verify steps goes: beside it, `…-verify`.
fn verify_path(worktree: &Path) -> PathBuf {
    let mut name = worktree.file_name().unwrap_or_default().to_owned();
    name.push("-verify");
    worktree.with_file_name(name)
}

/// The tree a commit of `work_tree`'s files holds, built in nightshift's folder `private` (never with the
/// work tree's own `.git`, index or git folder): an index started from `start_index` (a copy of one
/// nightshift saved, whose stat data spares reading unchanged files) or else from `base` (a commit or a
/// tree), then `add --all`, with the repositories inside `work_tree` left out by an excludes file, then
/// `write-tree`. The folders `held` (nightshift's for the length of a job: the skills it stages) stay as
/// `base` has them. Every gitlink the add made or changed is put back as `base` has it (or taken out): a
/// `.gitignore` negation (`!lib/`) outranks the excludes file, and a `.git` file inside names any
/// repository, whose commit would otherwise be pushed as a submodule. The objects the add and the tree
/// make are written to `objects`, a quarantine emptied first; those in `alternates` (the mirror's objects
/// and maybe another quarantine) are read, never written. Returns the tree and the repositories left out.
#[allow(clippy::too_many_arguments)]
async fn tree_of(
    git: &Git,
    mirror: &Path,
    work_tree: &Path,
    private: &Path,
    (objects, alternates): (&Path, &[&Path]),
    start_index: &Path,
    base: &str,
    held: &[&str],
) -> Result<(String, Vec<PathBuf>)> {
    tokio::fs::create_dir_all(private)
        .await
        .with_context(|| format!("creating {}", private.display()))?;
    if tokio::fs::symlink_metadata(objects).await.is_ok() {
        crate::safe_fs::remove_tree_async(objects)
            .await
            .with_context(|| format!("emptying {}", objects.display()))?;
    }
    tokio::fs::create_dir_all(objects.join("pack"))
        .await
        .with_context(|| format!("creating {}", objects.display()))?;
    let git_cmd = |repo| git.cmd(repo).objects(objects, alternates);
    let index = private.join("index");
    let excludes = private.join("exclude");
    let _ = tokio::fs::remove_file(&index).await;
    let root = work_tree.to_owned();
    let nested = tokio::task::spawn_blocking(move || nested_repositories(&root))
        .await?
        .with_context(|| format!("reading {}", work_tree.display()))?;
    let mut lines = Vec::new();
    for rel in &nested {
        lines.extend(exclude_line(rel)?);
    }
    tokio::fs::write(&excludes, lines).await?;
    if copy_index(start_index.to_owned(), index.clone())
        .await
        .is_err()
    {
        git_cmd(Repo::Bare(mirror))?
            .index(&index)
            .args(["read-tree", "--end-of-options", base])
            .run()
            .await?;
    }
    let work = Repo::Work {
        git_dir: mirror,
        work_tree,
    };
    git_cmd(work)?
        .index(&index)
        .config(format!("core.excludesFile={}", excludes.display()))
        .args(["add", "--all"])
        .run()
        .await?;
    if !held.is_empty() {
        git_cmd(work)?
            .index(&index)
            .args(["reset", "--quiet", "--end-of-options", base, "--"])
            .args(held.iter().copied())
            .run()
            .await?;
    }
    let diff = git_cmd(Repo::Bare(mirror))?
        .index(&index)
        .args([
            "diff-index",
            "--cached",
            "-z",
            "--no-renames",
            "--end-of-options",
            base,
        ])
        .output()
        .await?;
    let restore = gitlinks_to_restore(&diff)?;
    if !restore.is_empty() {
        git_cmd(Repo::Bare(mirror))?
            .index(&index)
            .args(["update-index", "-z", "--index-info"])
            .stdin(restore)
            .run()
            .await?;
    }
    let tree = git_cmd(Repo::Bare(mirror))?
        .index(&index)
        .args(["write-tree"])
        .run()
        .await?
        .trim()
        .to_owned();
    Ok((tree, nested))
}

/// From `diff-index -z` of an index against its base: `update-index -z --index-info` input that puts
/// each gitlink the index has and the base does not have as it is back as the base has it (a new one
/// goes: mode 0).
fn gitlinks_to_restore(diff: &[u8]) -> Result<Vec<u8>> {
    let mut restore = Vec::new();
    let mut fields = diff.split(|b| *b == 0);
    while let Some(meta) = fields.next() {
        if meta.is_empty() {
            continue;
        }
        let path = fields
            .next()
            .filter(|path| !path.is_empty())
            .context("git diff-index ended inside a record")?;
        let meta =
            std::str::from_utf8(meta).context("git diff-index gave a record that is not text")?;
        let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        let [old_mode, new_mode, old_id, ..] = parts[..] else {
            bail!("git diff-index gave a record it should not: {meta}");
        };
        if new_mode != "160000" {
            continue;
        }
        if old_mode == "000000" {
            restore.extend_from_slice(format!("0 {}\t", "0".repeat(old_id.len())).as_bytes());
        } else {
            restore.extend_from_slice(format!("{old_mode} {old_id}\t").as_bytes());
        }
        restore.extend_from_slice(path);
        restore.push(0);
    }
    Ok(restore)
}

/// The paths whose entries differ between trees `from` and `to`, whose objects are in `objects` (a
/// quarantine, then its alternates).
async fn changed_paths(
    git: &Git,
    mirror: &Path,
    objects: (&Path, &[&Path]),
    from: &str,
    to: &str,
) -> Result<Vec<String>> {
    let names = git
        .cmd(Repo::Bare(mirror))
        .objects(objects.0, objects.1)?
        .args([
            "diff-tree",
            "-r",
            "-z",
            "--name-only",
            "--no-renames",
            "--end-of-options",
            from,
            to,
        ])
        .output()
        .await?;
    Ok(names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

impl VerifyTree {
    /// Writes the tree's files (its index is the tree: what the commit holds is what is staged, and `git
    /// diff HEAD` shows the agent's changes against the job's commit), then notes what each file is.
    async fn fill(&mut self) -> Result<()> {
        let git = &*self.git;
        let work = || Repo::Work {
            git_dir: &self.git_dir,
            work_tree: &self.path,
        };
        git.cmd(work())
            .args(["read-tree", "--end-of-options", &self.tree])
            .run()
            .await?;
        git.cmd(work())
            .config(format!("checkout.workers={}", checkout_workers()))
            .args(["checkout-index", "--all", "--force", "--quiet", "-u"])
            .run()
            .await?;
        let listed = git
            .cmd(Repo::Bare(&self.git_dir))
            .args([
                "ls-tree",
                "-r",
                "-z",
                "--full-tree",
                "--end-of-options",
                &self.tree,
            ])
            .output()
            .await?;
        let root = self.path.clone();
        self.files = tokio::task::spawn_blocking(move || -> Result<Vec<(PathBuf, Stamp)>> {
            let mut files = Vec::new();
            for entry in listed.split(|b| *b == 0).filter(|e| !e.is_empty()) {
                let text = String::from_utf8_lossy(entry);
                // `<mode> <type> <id>\t<path>`; a gitlink's folder is not the tree's to check.
                let Some(tab) = entry.iter().position(|b| *b == b'\t') else {
                    bail!("git ls-tree gave a line it should not: {text}");
                };
                if text.starts_with("160000 ") {
                    continue;
                }
                use std::os::unix::ffi::OsStrExt;
                let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&entry[tab + 1..]));
                let stamp = Stamp::of(&root, &rel, None)?
                    .with_context(|| format!("{} was not checked out", rel.display()))?;
                files.push((rel, stamp));
            }
            Ok(files)
        })
        .await??
        .into();
        Ok(())
    }

    /// The files of the tree checked out that are no longer as the checkout wrote them (changed, gone,
    /// turned into something else, their executable bit flipped): what the steps so far changed of the
    /// work (nothing, as a rule). A file a step added is not a change (the commit is the tree checked, and
    /// build output and reports are what steps write), and neither is a file rewritten with the same bytes.
    /// Read from the files themselves, never through git: the bytes as written, whatever `.gitattributes`
    /// says, and nothing is stored in the mirror.
    pub async fn changed(&self) -> Result<Vec<String>> {
        let (root, files) = (self.path.clone(), self.files.clone());
        tokio::task::spawn_blocking(move || {
            let mut changed = Vec::new();
            for (rel, stamp) in files.iter() {
                let now = Stamp::of(&root, rel, Some(stamp)).unwrap_or(None);
                if !now.is_some_and(|now| now.same_as(stamp)) {
                    changed.push(rel.to_string_lossy().into_owned());
                }
            }
            changed
        })
        .await
        .context("reading the checkout")
    }

    /// Puts the checkout's `.git` back as nightshift wrote it (whatever a step left in its place: a
    /// repository of the work's own code would have later steps' git read it and run its config), before
    /// each step.
    pub async fn restore_git_file(&self) -> Result<()> {
        let dot_git = self.path.join(".git");
        match tokio::fs::symlink_metadata(&dot_git).await {
            Ok(meta) if meta.is_dir() => crate::safe_fs::remove_tree_async(&dot_git).await?,
            Ok(_) => tokio::fs::remove_file(&dot_git).await?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        tokio::fs::write(&dot_git, format!("gitdir: {}\n", path_str(&self.git_dir)?))
            .await
            .with_context(|| format!("writing {}", dot_git.display()))
    }

    /// Deletes the checkout (no link followed) and its git folder's index; the tree's objects stay until
    /// the next round's tree or the commit (which compares its tree with the one checked).
    pub async fn remove(self) {
        let _ = crate::safe_fs::remove_tree_async(&self.path).await;
        let _ = tokio::fs::remove_file(self.git_dir.join("index")).await;
    }
}

/// What a file of a verify checkout was when it was written: its kind and executable bit, its stat data
/// and a digest of its bytes (a link's: of its target).
#[derive(Clone, Debug)]
struct Stamp {
    kind: u32,
    executable: bool,
    len: u64,
    stat: (u64, i64, i64, i64, i64),
    /// Its stat data cannot tell a rewrite from this file (whole-second times, stamped in the second
    /// they show): its bytes are always read again.
    racy: bool,
    digest: [u8; 32],
}

impl Stamp {
    /// The file at `rel` below `root` now, or None when it is not there or a folder on its way is not a
    /// folder (a link a step made: nothing is read through it), or when it is not of `before`'s kind,
    /// executable bit and length (a change, seen without reading it). When its stat data are those of
    /// `before` (the change time cannot be set back), it is `before`, and its bytes are not read again.
    fn of(root: &Path, rel: &Path, before: Option<&Stamp>) -> Result<Option<Stamp>> {
        use sha2::Digest;
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let mut dir = root.to_owned();
        if let Some(parent) = rel.parent() {
            for part in parent.components() {
                dir.push(part);
                match std::fs::symlink_metadata(&dir) {
                    Ok(meta) if meta.file_type().is_dir() => {}
                    _ => return Ok(None),
                }
            }
        }
        let path = root.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(None);
        };
        let kind = meta.mode() & libc::S_IFMT;
        let executable = meta.mode() & 0o111 != 0;
        let stat = (
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        );
        if let Some(before) = before {
            // Another kind, mode or length is a change, said without reading a byte (a step that made
            // every file a 1 GiB sparse one must not cost hours of hashing).
            if before.kind != kind || before.executable != executable || before.len != meta.len() {
                return Ok(None);
            }
            if before.stat == stat && !before.racy {
                return Ok(Some(before.clone()));
            }
        }
        let mut hasher = sha2::Sha256::new();
        if meta.file_type().is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            hasher.update(std::fs::read_link(&path)?.as_os_str().as_bytes());
        } else if meta.file_type().is_file() {
            // Opened without following a link (one put there since the look above is refused), and read
            // no further than the length it had: a file still growing is a change anyway.
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path);
            let Ok(file) = file else { return Ok(None) };
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = file.take(meta.len() + 1);
            loop {
                let n = left.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        // On a filesystem that keeps whole seconds (no nanoseconds at all), a file rewritten in the second
        // it was stamped keeps its stat data: its bytes are read again each time.
        let racy = meta.mtime_nsec() == 0
            && meta.ctime_nsec() == 0
            && meta.ctime()
                >= std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(i64::MAX, |d| d.as_secs() as i64)
                    - 2;
        Ok(Some(Stamp {
            kind,
            executable,
            len: meta.len(),
            stat,
            racy: before.map_or(racy, |b| b.racy),
            digest: hasher.finalize().into(),
        }))
    }

    /// The same file as `before`: same kind, executable bit and length, and the same bytes.
    fn same_as(&self, before: &Stamp) -> bool {
        self.kind == before.kind
            && self.executable == before.executable
            && self.len == before.len
            && self.digest == before.digest
    }
}

impl Worktree {
    /// Commits what the agent left in the worktree, as nightshift, on top of the job's commit, in the
    /// mirror: the tree [`Worktree::tree_now`] builds (with `held`). With `verified`, the tree the verify steps checked,
    /// which it must be (nothing changes the worktree after them; this says so if something did).
    pub async fn commit_changes(
        &self,
        message: &str,
        author: (&str, &str),
        verified: Option<&str>,
        held: &[&str],
    ) -> Result<Changes> {
        let git = &*self.git;
        // Built into a quarantine of its own, whose objects (the work's new files, and the commit) move
        // into the mirror once the commit is made: only what is committed is ever stored there. After
        // verify steps, the tree checked is in their quarantine, read as an alternate (so its objects
        // are not written a second time) and moved into the mirror too.
        let objects = self.private.join("objects-commit");
        let (mirror_objects, trial) = (self.mirror.join("objects"), self.trial_objects());
        let mut alternates = vec![mirror_objects.as_path()];
        if verified.is_some() {
            alternates.push(&trial);
        }
        let (tree, nested) = self.build_tree(held, (&objects, &alternates)).await?;
        if let Some(verified) = verified
            && verified != tree
        {
            let changed =
                changed_paths(git, &self.mirror, (&objects, &alternates), verified, &tree)
                    .await
                    .unwrap_or_default();
            bail!(
                "the worktree changed after the verify steps checked it: {}",
                changed.join(", ")
            );
        }
        let base = git
            .cmd(Repo::Bare(&self.mirror))
            .args([
                "rev-parse",
                "--verify",
                "--end-of-options",
                &format!("{}^{{tree}}", self.commit),
            ])
            .run()
            .await?
            .trim()
            .to_owned();
        let nested = nested
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if tree == base {
            return Ok(Changes {
                commit: None,
                stat: String::new(),
                nested,
            });
        }
        let commit = git
            .cmd(Repo::Bare(&self.mirror))
            .objects(&objects, &alternates)?
            .config(format!("user.name={}", author.0))
            .config(format!("user.email={}", author.1))
            .args([
                "commit-tree",
                "-p",
                &self.commit,
                "-m",
                message,
                "--end-of-options",
                &tree,
            ])
            .run()
            .await?
            .trim()
            .to_owned();
        let mut from = vec![objects.clone()];
        if verified.is_some() {
            from.insert(0, trial.clone());
        }
        let to = mirror_objects.clone();
        tokio::task::spawn_blocking(move || {
            from.iter().try_for_each(|from| migrate_objects(from, &to))
        })
        .await?
        .context("moving the commit's objects into the mirror")?;
        // Kept under nightshift's own ref until the job ends: its delivery may come after a restart.
        git.cmd(Repo::Bare(&self.mirror))
            .args([
                "update-ref",
                "--end-of-options",
                &job_ref(self.job, &commit),
                &commit,
            ])
            .run()
            .await?;
        let stat = git
            .cmd(Repo::Bare(&self.mirror))
            .args([
                "diff-tree",
                "--stat",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "-r",
                "--end-of-options",
                &self.commit,
                &commit,
            ])
            .run()
            .await?;
        Ok(Changes {
            commit: Some(commit),
            stat,
            nested,
        })
    }

    /// The tree a commit of the worktree holds now: its files added into a private index of the job's
    /// commit (`add -A`: symlinks as symlinks, never their targets' content; `.gitignore` applies); the
    /// worktree's own `.git`, index and git folder are never read; repositories the agent made inside it
    /// are left out ([`tree_of`]).
    /// The folders `held` (those nightshift stages skills into for the length of the job, and puts back
    /// before the commit) are as the job's commit has them.
    /// Its objects are in the worktree's quarantine ([`Worktree::trial_objects`]), emptied at each call:
    /// a verify round's tree never reaches the mirror (one agent's rounds of new files would pile up there
    /// until a `gc` two weeks later), and goes with the attempt.
    pub async fn tree_now(&self, held: &[&str]) -> Result<String> {
        let mirror_objects = self.mirror.join("objects");
        let objects = (self.trial_objects(), [mirror_objects.as_path()]);
        Ok(self.build_tree(held, (&objects.0, &objects.1)).await?.0)
    }

    /// Where the objects of [`Worktree::tree_now`]'s trees are: in nightshift's private folder for the
    /// attempt, which no box sees unless it is shown (the verify steps' git reads it).
    pub fn trial_objects(&self) -> PathBuf {
        self.verify_git_dir().join("objects")
    }

    /// The git folder of the verify steps' checkout ([`VerifyTree::git_dir`]).
    fn verify_git_dir(&self) -> PathBuf {
        self.private.join("verify-git")
    }

    async fn build_tree(
        &self,
        held: &[&str],
        objects: (&Path, &[&Path]),
    ) -> Result<(String, Vec<PathBuf>)> {
        check_mirror(&self.repo, &self.mirror).await?;
        tree_of(
            &self.git,
            &self.mirror,
            &self.path,
            &self.private,
            objects,
            &self.private.join("index.base"),
            &self.commit,
            held,
        )
        .await
        .context("adding the agent's changes")
    }

    /// A checkout of `tree` (one [`Worktree::tree_now`] built) for the verify steps, beside the worktree
    /// (`…-verify`): a worktree of the mirror of its own, whose files are `tree`'s, written fresh, and
    /// whose `HEAD` and index are the job's commit, so the agent's changes show as changes (`git diff`)
    /// as in its worktree. Nothing the agent left there that a commit leaves out (ignored files, its own
    /// repositories, empty folders, its `.git`, a submodule's folder filled in) is in it: the steps check
    /// what delivery pushes.
    pub async fn check_out_for_verify(&self, tree: &str) -> Result<VerifyTree> {
        let path = verify_path(&self.path);
        if tokio::fs::symlink_metadata(&path).await.is_ok() {
            crate::safe_fs::remove_tree_async(&path)
                .await
                .with_context(|| format!("removing {}", path.display()))?;
        }
        let git_dir = self.verify_git_dir();
        let objects = self.trial_objects();
        // The mirror's branches, also as `origin/…` (as a clone names them: `git diff origin/main...`),
        // and its tags.
        let listed = self
            .git
            .cmd(Repo::Bare(&self.mirror))
            .args([
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/heads",
                "refs/tags",
            ])
            .output()
            .await?;
        // `packed-refs` lines, sorted by name.
        let mut refs = std::collections::BTreeMap::new();
        for line in listed.split(|b| *b == b'\n') {
            let Some(space) = line.iter().position(|b| *b == b' ') else {
                continue;
            };
            let (id, name) = (&line[..space], &line[space + 1..]);
            if let Some(branch) = name.strip_prefix(b"refs/heads/") {
                refs.insert([b"refs/remotes/origin/", branch].concat(), id);
            }
            refs.insert(name.to_vec(), id);
        }
        let refs: Vec<u8> = refs
            .into_iter()
            .flat_map(|(name, id)| [id, b" ", &name, b"\n"].concat())
            .collect();
        let files = [
            (git_dir.join("HEAD"), format!("{}\n", self.commit)),
            (
                git_dir.join("config"),
                "[core]\n\trepositoryformatversion = 0\n\tbare = false\n".to_owned(),
            ),
            (
                objects.join("info").join("alternates"),
                format!("{}\n", path_str(&self.mirror.join("objects"))?),
            ),
            (
                path.join(".git"),
                format!("gitdir: {}\n", path_str(&git_dir)?),
            ),
        ];
        let (checkout_dir, gd) = (path.clone(), git_dir.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            for dir in [
                gd.join("refs/heads"),
                gd.join("refs/tags"),
                gd.join("objects/info"),
            ] {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::create_dir(&checkout_dir)
                .with_context(|| format!("creating {}", checkout_dir.display()))?;
            let _ = std::fs::remove_file(gd.join("index"));
            for (file, text) in files {
                std::fs::write(&file, text)
                    .with_context(|| format!("writing {}", file.display()))?;
            }
            let mut packed = b"# pack-refs with: sorted\n".to_vec();
            packed.extend_from_slice(&refs);
            std::fs::write(gd.join("packed-refs"), packed)
                .with_context(|| format!("writing {}", gd.join("packed-refs").display()))
        })
        .await??;
        let mut checkout = VerifyTree {
            path,
            git_dir,
            tree: tree.to_owned(),
            files: Default::default(),
            git: self.git.clone(),
        };
        match checkout.fill().await {
            Ok(()) => Ok(checkout),
            Err(e) => {
                checkout.remove().await;
                Err(e.context(format!("checking out the tree {tree} for the verify steps")))
            }
        }
    }

    pub async fn remove(self) -> Result<()> {
        // A checkout for the verify steps left by a run that stopped in them: its files first, outside the
        // lock (there may be many), then its git folder under it (where an earlier version registered it).
        let verify = verify_path(&self.path);
        let leftover = tokio::fs::symlink_metadata(&verify).await.is_ok();
        if leftover {
            let _ = crate::safe_fs::remove_tree_async(&verify).await;
        }
        let guard = self.lock.lock().await;
        if leftover {
            remove_worktree_files(&self.mirror, &verify, None, None).await;
        }
        // Under the lock, the worktree and its git folder only move out of the way (two renames, into a
        // folder the next run sweeps if this one dies); the next job of the repository need not wait
        // for their files to be deleted, nor for `worktree prune` (git no longer lists the worktree).
        let moved = tokio::fs::create_dir_all(&self.trash).await.is_ok()
            && tokio::fs::rename(&self.path, self.trash.join("tree"))
                .await
                .is_ok()
            && tokio::fs::rename(&self.git_dir, self.trash.join("git"))
                .await
                .is_ok();
        if moved {
            drop(guard);
            let _ = crate::safe_fs::remove_tree_async(&self.private).await;
            return crate::safe_fs::remove_tree_async(&self.trash)
                .await
                .with_context(|| format!("removing {}", self.trash.display()));
        }
        let _ = crate::safe_fs::remove_tree_async(&self.trash).await;
        remove_worktree_files(
            &self.mirror,
            &self.path,
            Some(&self.git_dir),
            Some(&self.private),
        )
        .await;
        if self.path.exists() {
            bail!("{} could not be removed", self.path.display());
        }
        self.git
            .cmd(Repo::Bare(&self.mirror))
            .args(["worktree", "prune"])
            .run()
            .await?;
        Ok(())
    }
}

/// Moves the objects git wrote into the quarantine `from` into the object folder `to` (a mirror's), as git
/// does after a push: loose objects by rename (one `to` has already stays as it is), then each pack with
/// its `.idx` last, so that no reader finds an index without its pack. `from` is nightshift's own (no box
/// sees it), so its names are git's; anything else in it is left where it is.
fn migrate_objects(from: &Path, to: &Path) -> std::io::Result<()> {
    fn hex(name: &str) -> bool {
        name.bytes().all(|b| b.is_ascii_hexdigit())
    }
    let put = |source: &Path, dest: &Path| -> std::io::Result<()> {
        match std::fs::symlink_metadata(dest) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::rename(source, dest) {
                    // Another filesystem: copied under a temporary name, then renamed into place.
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                        static PARTS: std::sync::atomic::AtomicU64 =
                            std::sync::atomic::AtomicU64::new(0);
                        let n = PARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut part = dest.as_os_str().to_owned();
                        part.push(format!(".{}-{n}.part", std::process::id()));
                        std::fs::copy(source, &part)?;
                        std::fs::File::open(&part)?.sync_all()?;
                        std::fs::rename(&part, dest)
                    }
                    other => other,
                }
            }
            Err(e) => Err(e),
        }
    };
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 2 || !hex(name) || !entry.file_type()?.is_dir() {
            continue;
        }
        let dest = to.join(name);
        match std::fs::create_dir(&dest) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        for object in std::fs::read_dir(entry.path())? {
            let object = object?;
            let file = object.file_name();
            if file.to_str().is_some_and(|f| f.len() >= 38 && hex(f))
                && object.file_type()?.is_file()
            {
                put(&object.path(), &dest.join(&file))?;
            }
        }
    }
    let packs = from.join("pack");
    let mut names = match std::fs::read_dir(&packs) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("pack-"))
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    if names.is_empty() {
        return Ok(());
    }
    let rank = |name: &str| match name.rsplit('.').next() {
        Some("pack") => 0,
        Some("idx") => 2,
        _ => 1,
    };
    names.sort_by_key(|n| rank(n));
    std::fs::create_dir_all(to.join("pack"))?;
    for name in names {
        let file = std::fs::symlink_metadata(packs.join(&name))?
            .file_type()
            .is_file();
        if file && ["pack", "rev", "idx"].contains(&name.rsplit('.').next().unwrap_or_default()) {
            put(&packs.join(&name), &to.join("pack").join(&name))?;
        }
    }
    Ok(())
}

/// The ref a job's commit is kept under in the mirror until the job ends: one per commit, so an attempt
/// that lost its job (and may still be committing) never moves the ref the new owner's delivery pushes.
fn job_ref(job: JobId, commit: &str) -> String {
    format!("refs/nightshift/jobs/{job}/{commit}")
}

/// Refuses a branch name git could take for an option or a refspec.
fn check_branch_name(branch: &str) -> Result<()> {
    if branch.is_empty()
        || branch.starts_with('-')
        || branch.contains("..")
        || branch
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
    {
        bail!("`{}` is not a branch name", branch.escape_debug());
    }
    Ok(())
}

/// The commit `branch` is at on the remote (`ls-remote`, run in `mirror`), None when it has no such branch.
async fn remote_tip_of(
    git: &Git,
    repo: &RepoName,
    mirror: &Path,
    clone_url: &str,
    branch: &str,
    auth: &GitAuth,
) -> Result<Option<String>> {
    let url = git.remote(clone_url)?;
    check_branch_name(branch)?;
    let out = git
        .cmd(Repo::Bare(mirror))
        .args([
            "ls-remote",
            "--heads",
            "--end-of-options",
            &url,
            &format!("refs/heads/{branch}"),
        ])
        .auth(auth)
        .run()
        .await
        .with_context(|| format!("reading {repo}'s branch {branch}"))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, name)| *name == format!("refs/heads/{branch}"))
        .map(|(sha, _)| sha.to_owned())
        .filter(|sha| is_object_id(sha)))
}

/// The commit the mirror's `refs/heads/BRANCH` names, read from its files (a loose ref, else
/// `packed-refs`) without a git process. None when the name is not a plain branch name, the ref is not
/// a regular file, or it is not there (another ref format, say): the caller then asks git. A ref in the
/// mirror names a commit it holds whole: git writes a fetched ref only after its objects.
async fn local_branch(mirror: &Path, branch: &str) -> Option<String> {
    let plain = check_branch_name(branch).is_ok()
        && branch.split('/').all(|c| {
            !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock") && !c.contains('@')
        });
    if !plain {
        return None;
    }
    let name = format!("refs/heads/{branch}");
    let loose = mirror.join(&name);
    match tokio::fs::symlink_metadata(&loose).await {
        Ok(meta) if meta.is_file() => {
            let text = tokio::fs::read_to_string(&loose).await.ok()?;
            let sha = text.strip_suffix('\n').unwrap_or(&text);
            return is_object_id(sha).then(|| sha.to_owned());
        }
        Ok(_) => return None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return None,
    }
    let packed = mirror.join("packed-refs");
    if !tokio::fs::symlink_metadata(&packed)
        .await
        .is_ok_and(|m| m.is_file())
    {
        return None;
    }
    let text = tokio::fs::read_to_string(&packed).await.ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .filter_map(|l| l.split_once(' '))
        .find(|(_, n)| *n == name)
        .map(|(sha, _)| sha.to_owned())
        .filter(|sha| is_object_id(sha))
}

/// A full commit id (SHA-1 or SHA-256, hex).
fn is_object_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit at the tip of `branch` in the mirror (its HEAD, the default branch, when empty).
async fn branch_tip(git: &Git, repo: &RepoName, mirror: &Path, branch: &str) -> Result<String> {
    let rev = if branch.is_empty() {
        "HEAD^{commit}".to_owned()
    } else {
        if branch.starts_with('-')
            || branch.contains("..")
            || branch.contains("@{")
            || branch
                .chars()
                .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
        {
            bail!("{repo} has no branch `{}`", branch.escape_debug());
        }
        format!("refs/heads/{branch}^{{commit}}")
    };
    Ok(git
        .cmd(Repo::Bare(mirror))
        .args(["rev-parse", "--verify", "--end-of-options", &rev])
        .run()
        .await
        .with_context(|| format!("{repo} has no branch `{branch}`"))?
        .trim()
        .to_owned())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command as StdCommand;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = StdCommand::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Workspaces under `dir`, allowed to clone the local remotes there.
    fn spaces_in(dir: &Path) -> Workspaces {
        Workspaces::new(
            &dir.join("data"),
            GitPolicy {
                file_roots: vec![std::fs::canonicalize(dir).unwrap()],
                http_hosts: vec![],
                timeout: std::time::Duration::from_secs(60),
            },
        )
    }

    /// A bare "remote" with one commit on main, and the path of a scratch clone to push more with.
    fn remote(dir: &Path) -> (PathBuf, PathBuf) {
        let bare = dir.join("remote.git");
        let work = dir.join("work");
        sh(
            dir,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                bare.to_str().unwrap(),
            ],
        );
        sh(
            dir,
            &[
                "clone",
                "--quiet",
                bare.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        std::fs::write(work.join("README.md"), "one\n").unwrap();
        sh(&work, &["add", "."]);
        sh(
            &work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                "one",
            ],
        );
        sh(&work, &["push", "--quiet", "origin", "HEAD:main"]);
        (bare, work)
    }

    #[tokio::test]
    async fn worktrees_follow_the_remote_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, work) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();

        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Branch("main"),
                JobId(1),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(wt.path.join("README.md")).unwrap(),
            "one\n"
        );
        let first = wt.commit.clone();
        let path = wt.path.clone();
        wt.remove().await.unwrap();
        assert!(!path.exists());

        std::fs::write(work.join("README.md"), "two\n").unwrap();
        sh(
            &work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-am",
                "two",
            ],
        );
        sh(&work, &["push", "--quiet", "origin", "HEAD:main"]);
        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Branch("main"),
                JobId(2),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(wt.path.join("README.md")).unwrap(),
            "two\n",
            "the mirror was fetched"
        );

        let old = spaces
            .prepare(
                &repo,
                url,
                Checkout::Commit(&first),
                JobId(3),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(old.path.join("README.md")).unwrap(),
            "one\n",
            "exact commit"
        );
        wt.remove().await.unwrap();
        old.remove().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_jobs_on_one_repository_each_get_their_worktree() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = Arc::new(spaces_in(dir.path()));
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap().to_owned();
        let mut tasks = Vec::new();
        for task in 0..8 {
            let (spaces, repo, url) = (spaces.clone(), repo.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..6 {
                    let job = JobId(task * 100 + round);
                    let wt = spaces
                        .prepare(
                            &repo,
                            &url,
                            Checkout::Branch("main"),
                            job,
                            1,
                            &GitAuth::none(),
                        )
                        .await?;
                    assert!(wt.path.join("README.md").exists());
                    wt.remove().await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_missing_branch_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let err = spaces
            .prepare(
                &repo,
                bare.to_str().unwrap(),
                Checkout::Branch("nope"),
                JobId(1),
                1,
                &GitAuth::none(),
            )
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("o/r has no branch `nope`"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn repository_context_is_read_as_blobs_and_links_and_submodules_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, work) = remote(dir.path());
        std::os::unix::fs::symlink("/proc/self/environ", work.join("AGENTS.md")).unwrap();
        std::fs::create_dir_all(work.join("sub")).unwrap();
        std::fs::write(work.join("sub/AGENTS.md"), "sub rules\n").unwrap();
        let skill = work.join(".agents/skills/s");
        std::fs::create_dir_all(&skill).unwrap();
        std::fs::write(skill.join("SKILL.md"), "skill\n").unwrap();
        std::fs::write(skill.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            skill.join("run.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", skill.join("etc")).unwrap();
        std::fs::create_dir_all(work.join(".nightshift/triggers")).unwrap();
        std::fs::write(work.join(".nightshift/triggers/a.yml"), "a: 1\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", work.join(".nightshift/triggers/b.yml")).unwrap();
        sh(&work, &["add", "-A"]);
        let head = sh(&work, &["rev-parse", "HEAD"]);
        sh(
            &work,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{head},.agents/skills/s/module"),
            ],
        );
        sh(
            &work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                "context",
            ],
        );
        sh(&work, &["push", "--quiet", "origin", "HEAD:main"]);

        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let files = spaces
            .read_files(
                &repo,
                url,
                "",
                ".nightshift/triggers",
                &[".yml"],
                &GitAuth::none(),
            )
            .await
            .unwrap();
        assert_eq!(
            files.files,
            vec![(".nightshift/triggers/a.yml".to_owned(), "a: 1\n".to_owned())]
        );
        assert_eq!(
            files.skipped,
            vec![Skipped {
                path: ".nightshift/triggers/b.yml".into(),
                why: SkipReason::Symlink
            }]
        );

        let dest = dir.path().join("context");
        let context = spaces.export_context(&repo, "", &dest).await.unwrap();
        assert_eq!(context.agents_md, vec!["sub/AGENTS.md".to_owned()]);
        let said: Vec<String> = context.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            vec![
                "skipped symlink .agents/skills/s/etc",
                "skipped submodule .agents/skills/s/module",
                "skipped symlink AGENTS.md",
            ]
        );
        assert!(!dest.join("AGENTS.md").exists());
        assert!(std::fs::symlink_metadata(dest.join(".agents/skills/s/etc")).is_err());
        assert_eq!(
            std::fs::read_to_string(dest.join("sub/AGENTS.md")).unwrap(),
            "sub rules\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(".agents/skills/s/run.sh"), 0o755);
        assert_eq!(mode(".agents/skills/s/SKILL.md"), 0o644);
    }

    #[tokio::test]
    async fn the_agents_work_is_committed_from_the_files_and_a_changed_mirror_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Branch("main"),
                JobId(7),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        let none = wt
            .commit_changes("m", ("n", "n@n"), None, &[])
            .await
            .unwrap();
        assert!(none.commit.is_none(), "nothing changed");

        // The agent commits on its own (moving the worktree's HEAD) and leaves more changes: all of it is
        // the change, against the job's commit.
        std::fs::write(wt.path.join("README.md"), "two\n").unwrap();
        sh(&wt.path, &["add", "README.md"]);
        sh(
            &wt.path,
            &[
                "-c",
                "user.name=a",
                "-c",
                "user.email=a@a",
                "commit",
                "-qm",
                "agent",
            ],
        );
        std::fs::write(wt.path.join("new.txt"), "new\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", wt.path.join("passwd")).unwrap();
        let config = wt.mirror.join("config");
        std::fs::write(&config, "[core]\n\tbare = true\n\tfsmonitor = /bin/false\n").unwrap();
        std::fs::write(wt.mirror.join("commondir"), "/tmp\n").unwrap();

        let changes = wt
            .commit_changes("the message", ("nightshift", "n@n"), None, &[])
            .await
            .unwrap();
        let commit = changes.commit.unwrap();
        assert_eq!(std::fs::read_to_string(&config).unwrap(), MIRROR_CONFIG);
        assert!(!wt.mirror.join("commondir").exists());
        let mirror = wt.mirror.to_str().unwrap().to_owned();
        let show = |rev: &str| sh(dir.path(), &["--git-dir", &mirror, "show", rev]);
        assert_eq!(show(&format!("{commit}:README.md")), "two");
        assert_eq!(show(&format!("{commit}:new.txt")), "new");
        assert_eq!(
            sh(
                dir.path(),
                &[
                    "--git-dir",
                    &mirror,
                    "cat-file",
                    "-p",
                    &format!("{commit}:passwd")
                ]
            ),
            "/etc/passwd"
        );
        assert_eq!(
            sh(
                dir.path(),
                &[
                    "--git-dir",
                    &mirror,
                    "log",
                    "-1",
                    "--format=%P %an %s",
                    &commit
                ]
            ),
            format!("{} nightshift the message", wt.commit)
        );
        assert!(changes.stat.contains("3 files changed"), "{}", changes.stat);
        wt.remove().await.unwrap();
    }

    #[test]
    fn gitlinks_made_or_changed_are_put_back_as_the_base_has_them() {
        let diff = b":160000 160000 aaaa bbbb M\0sub\0:000000 160000 0000 cccc A\0new dir\0\
                     :100644 100644 dddd eeee M\0file\0:160000 100644 ffff 1111 T\0was-sub\0";
        assert_eq!(
            gitlinks_to_restore(diff).unwrap(),
            b"160000 aaaa\tsub\x000 0000\tnew dir\x00".to_vec()
        );
        assert!(gitlinks_to_restore(b":160000 160000 aaaa bbbb M\0").is_err());
    }

    /// The files below `root` (links as `-> target`), by path, leaving out the top `.git`.
    fn files_below(root: &Path) -> std::collections::BTreeMap<String, String> {
        let mut found = std::collections::BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
                let entry = entry.unwrap();
                let path = rel.join(entry.file_name());
                if path == Path::new(".git") {
                    continue;
                }
                let kind = entry.file_type().unwrap();
                let name = path.to_string_lossy().into_owned();
                if kind.is_symlink() {
                    let target = std::fs::read_link(entry.path()).unwrap();
                    found.insert(name, format!("-> {}", target.display()));
                } else if kind.is_dir() {
                    found.insert(format!("{name}/"), String::new());
                    stack.push(path);
                } else {
                    found.insert(name, std::fs::read_to_string(entry.path()).unwrap());
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn the_verify_steps_get_a_checkout_of_exactly_what_the_commit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let wt = spaces
            .prepare(
                &repo,
                bare.to_str().unwrap(),
                Checkout::Branch("main"),
                JobId(8),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        let p = &wt.path;
        // What an agent leaves: a new file, and what a commit leaves out: an answer its own `.gitignore`
        // hides (and its own index claims tracked), a tool planted in an ignored folder, an ignored link to
        // a folder outside, an empty folder, a tracked file turned into an ignored folder of the same name,
        // a file a `.gitignore` re-includes from a folder another rule ignores, its own `.git` folder with
        // a link into it, and a repository of its own re-included by a negation, whose `.git` file names
        // another repository (whose commit would be pushed as a submodule).
        std::fs::write(p.join("kept.txt"), "kept\n").unwrap();
        std::fs::write(
            p.join(".gitignore"),
            "answer.txt\nnode_modules/\nlinked\nREADME.md/\n/pkg/*\n!vendor/\n",
        )
        .unwrap();
        std::fs::write(p.join("answer.txt"), "42\n").unwrap();
        sh(p, &["add", "-f", "answer.txt"]);
        std::fs::create_dir_all(p.join("node_modules/.bin")).unwrap();
        std::fs::write(p.join("node_modules/.bin/jest"), "#!/bin/sh\nexit 0\n").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep me\n").unwrap();
        std::os::unix::fs::symlink(&outside, p.join("linked")).unwrap();
        std::fs::create_dir_all(p.join("plugins")).unwrap();
        std::fs::remove_file(p.join("README.md")).unwrap();
        std::fs::create_dir_all(p.join("README.md")).unwrap();
        std::fs::write(p.join("README.md/__main__.py"), "print('ok')\n").unwrap();
        std::fs::create_dir_all(p.join("pkg")).unwrap();
        std::fs::write(p.join("pkg/.gitignore"), "!impl.py\n").unwrap();
        std::fs::write(p.join("pkg/impl.py"), "x = 1\n").unwrap();
        std::fs::remove_file(p.join(".git")).unwrap();
        std::fs::create_dir_all(p.join(".git/hidden")).unwrap();
        std::fs::write(p.join(".git/hidden/answer"), "42\n").unwrap();
        std::os::unix::fs::symlink(".git/hidden/answer", p.join("answer2")).unwrap();
        std::fs::create_dir_all(p.join("vendor")).unwrap();
        std::fs::write(
            p.join("vendor/.git"),
            format!("gitdir: {}\n", bare.display()),
        )
        .unwrap();
        std::fs::write(p.join("vendor/answer.py"), "ANSWER = 42\n").unwrap();
        // And a folder nightshift holds for the job (its staged skills): as the job's commit has it.
        std::fs::create_dir_all(p.join(".claude")).unwrap();
        std::fs::write(p.join(".claude/settings.json"), "{}").unwrap();
        let held = [".claude"];

        let tree = wt.tree_now(&held).await.unwrap();
        let mirror = wt.mirror.to_str().unwrap().to_owned();
        // The tree is not stored in the mirror: a round's files never pile up there.
        assert!(
            std::process::Command::new("git")
                .args(["--git-dir", &mirror, "cat-file", "-e", &tree])
                .status()
                .is_ok_and(|s| !s.success()),
            "the tree is in the mirror"
        );
        let quarantine = wt.trial_objects();
        let listed = std::process::Command::new("git")
            .args(["--git-dir", &mirror, "ls-tree", "-r", "--full-tree", &tree])
            .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", &quarantine)
            .output()
            .unwrap();
        let listed = String::from_utf8(listed.stdout).unwrap().trim().to_owned();
        assert!(
            !listed.contains(" commit "),
            "no submodule is made: {listed}"
        );
        let names: Vec<&str> = listed
            .lines()
            .filter_map(|l| l.split('\t').nth(1))
            .collect();
        assert_eq!(
            names,
            [".gitignore", "answer2", "kept.txt", "pkg/impl.py"],
            "{listed}"
        );

        let checkout = wt.check_out_for_verify(&tree).await.unwrap();
        let c = checkout.path.clone();
        assert_ne!(&c, p);
        // The checkout's files are the tree's, byte for byte, and nothing else.
        let expected: std::collections::BTreeMap<String, String> = [
            (
                ".gitignore",
                std::fs::read_to_string(p.join(".gitignore")).unwrap(),
            ),
            ("answer2", "-> .git/hidden/answer".to_owned()),
            ("kept.txt", "kept\n".to_owned()),
            ("pkg/", String::new()),
            ("pkg/impl.py", "x = 1\n".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(files_below(&c), expected);
        assert!(
            std::fs::read_to_string(c.join("answer2")).is_err(),
            "the link into the agent's .git leads nowhere here"
        );
        // HEAD is the job's commit and the index the tree: the agent's changes are what is staged.
        let status = sh(&c, &["status", "--porcelain", "-uall"]);
        assert_eq!(
            status, "A  .gitignore\nD  README.md\nA  answer2\nA  kept.txt\nA  pkg/impl.py",
            "{status}"
        );
        assert_eq!(sh(&c, &["rev-parse", "HEAD"]), wt.commit);
        // The steps' git reads the agent's new files (they are in the checkout's own objects)...
        assert_eq!(sh(&c, &["show", ":kept.txt"]), "kept");
        // ...and names the repository's branches as a clone does (`git diff origin/main...`).
        let base = format!("origin/{}", wt.default_branch);
        assert_eq!(sh(&c, &["rev-parse", &base]), wt.commit);
        assert!(sh(&c, &["diff", "--name-only", &format!("{base}...HEAD")]).is_empty());
        // ...and the mirror's gc, which reads every worktree's index, is not handed objects it lacks.
        sh(dir.path(), &["--git-dir", &mirror, "gc", "--quiet"]);
        // What a step adds (build output, reports, ignored or not) is no change, nor is a file rewritten
        // with its bytes; a file of the tree changed, removed, made executable or replaced is one.
        std::fs::create_dir_all(c.join("node_modules")).unwrap();
        std::fs::write(c.join("node_modules/built"), "x").unwrap();
        std::fs::write(c.join("coverage.xml"), "<x/>").unwrap();
        std::fs::write(c.join("kept.txt"), "kept\n").unwrap();
        assert!(checkout.changed().await.unwrap().is_empty());
        std::fs::write(c.join("kept.txt"), "rewritten\n").unwrap();
        std::fs::remove_file(c.join(".gitignore")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            c.join("pkg/impl.py"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::remove_file(c.join("answer2")).unwrap();
        std::os::unix::fs::symlink("kept.txt", c.join("answer2")).unwrap();
        let mut changed = checkout.changed().await.unwrap();
        changed.sort();
        assert_eq!(
            changed,
            [".gitignore", "answer2", "kept.txt", "pkg/impl.py"]
        );
        // A folder on the way replaced by a link: nothing is read through it, and it is a change.
        std::fs::rename(c.join("pkg"), c.join("pkg-moved")).unwrap();
        std::os::unix::fs::symlink(&outside, c.join("pkg")).unwrap();
        std::fs::write(outside.join("impl.py"), "x = 1\n").unwrap();
        assert!(
            checkout
                .changed()
                .await
                .unwrap()
                .contains(&"pkg/impl.py".to_owned())
        );
        // A step that put a repository of its own in place of the checkout's `.git`: put back.
        std::fs::remove_file(c.join(".git")).unwrap();
        sh(&c, &["init", "--quiet", "."]);
        checkout.restore_git_file().await.unwrap();
        assert_eq!(sh(&c, &["rev-parse", "HEAD"]), wt.commit);
        // Its git folder is its own, not one of the mirror's worktrees.
        assert!(
            !wt.mirror
                .join("worktrees")
                .join(c.file_name().unwrap())
                .exists()
        );
        let index = checkout.git_dir.join("index");
        assert!(index.exists());
        checkout.remove().await;
        assert!(!c.exists() && !index.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "keep me\n"
        );

        // The commit is the tree that was checked, and refused if the worktree changed since.
        let changes = wt
            .commit_changes("m", ("n", "n@n"), Some(&tree), &held)
            .await
            .unwrap();
        let commit = changes.commit.unwrap();
        let in_mirror = |args: &[&str]| {
            let mut all = vec!["--git-dir", mirror.as_str()];
            all.extend_from_slice(args);
            sh(dir.path(), &all)
        };
        assert_eq!(
            in_mirror(&["rev-parse", &format!("{commit}^{{tree}}")]),
            tree
        );
        // The commit's objects moved into the mirror: its new file can be pushed from there.
        assert_eq!(
            in_mirror(&["cat-file", "-p", &format!("{commit}:kept.txt")]),
            "kept"
        );
        std::fs::write(p.join("kept.txt"), "later\n").unwrap();
        let refused = wt
            .commit_changes("m", ("n", "n@n"), Some(&tree), &held)
            .await;
        assert!(refused.is_err_and(|e| e.to_string().contains("changed after the verify steps")),);
        wt.remove().await.unwrap();
    }

    #[tokio::test]
    async fn repositories_inside_the_worktree_are_left_out_whatever_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let wt = spaces
            .prepare(
                &repo,
                bare.to_str().unwrap(),
                Checkout::Branch("main"),
                JobId(9),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        // Names with gitignore's special characters: each must match only its own folder.
        for name in ["we[ir]d *dir", "#hash", "!bang", "back\\slash", "a?b"] {
            let nested = wt.path.join(name);
            std::fs::create_dir_all(nested.join(".git")).unwrap();
            std::fs::write(nested.join("inside.txt"), "x").unwrap();
        }
        // Folders those patterns would match if they were globs, without a repository: kept.
        std::fs::create_dir_all(wt.path.join("weid xdir")).unwrap();
        std::fs::write(wt.path.join("weid xdir/kept.txt"), "kept").unwrap();
        std::fs::create_dir_all(wt.path.join("axb")).unwrap();
        std::fs::write(wt.path.join("axb/kept.txt"), "kept").unwrap();
        let changes = wt
            .commit_changes("m", ("n", "n@n"), None, &[])
            .await
            .unwrap();
        assert_eq!(
            changes.nested,
            vec!["!bang", "#hash", "a?b", "back\\slash", "we[ir]d *dir"]
        );
        let commit = changes.commit.unwrap();
        let mirror = wt.mirror.to_str().unwrap().to_owned();
        let files = sh(
            dir.path(),
            &[
                "--git-dir",
                &mirror,
                "ls-tree",
                "-r",
                "--name-only",
                &commit,
            ],
        );
        assert_eq!(files, "README.md\naxb/kept.txt\nweid xdir/kept.txt");
        wt.remove().await.unwrap();
    }

    #[tokio::test]
    async fn an_attempt_that_lost_its_job_never_touches_the_new_attempts_tree_or_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let none = GitAuth::none();
        let attempt = |n| spaces.prepare(&repo, url, Checkout::Branch("main"), JobId(5), n, &none);
        // The old attempt is still running when the new one starts.
        let old = attempt(1).await.unwrap();
        let new = attempt(2).await.unwrap();
        assert_ne!(old.path, new.path);
        std::fs::write(old.path.join("README.md"), "stale\n").unwrap();
        std::fs::write(new.path.join("README.md"), "fresh\n").unwrap();
        let fresh = new
            .commit_changes("m", ("n", "n@n"), None, &[])
            .await
            .unwrap()
            .commit
            .unwrap();
        // The old attempt commits after the new one did, then is stopped and cleared.
        let stale = old
            .commit_changes("m", ("n", "n@n"), None, &[])
            .await
            .unwrap()
            .commit
            .unwrap();
        spaces.discard(&repo, JobId(5), 1).await.unwrap();
        assert!(!old.path.exists());
        assert_eq!(
            std::fs::read_to_string(new.path.join("README.md")).unwrap(),
            "fresh\n"
        );
        assert!(
            spaces.has_job_commit(&repo, JobId(5), &fresh).await,
            "the new attempt's commit is still the one it made"
        );
        assert!(spaces.has_job_commit(&repo, JobId(5), &stale).await);
        assert!(!spaces.has_job_commit(&repo, JobId(6), &fresh).await);
        new.remove().await.unwrap();
        spaces.forget_job_commit(&repo, JobId(5)).await;
        assert!(!spaces.has_job_commit(&repo, JobId(5), &fresh).await);
        assert!(!spaces.has_job_commit(&repo, JobId(5), &stale).await);
    }

    #[tokio::test]
    async fn the_commit_nightshift_built_is_measured_after_its_worktree_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let wt = spaces
            .prepare(
                &repo,
                bare.to_str().unwrap(),
                Checkout::Branch("main"),
                JobId(9),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        std::fs::create_dir_all(wt.path.join(".github/workflows")).unwrap();
        std::fs::write(wt.path.join(".github/workflows/x.yml"), "on: push\n").unwrap();
        std::fs::write(wt.path.join("README.md"), "one\ntwo\n").unwrap();
        let commit = wt
            .commit_changes("m", ("n", "n@n"), None, &[])
            .await
            .unwrap()
            .commit
            .unwrap();
        wt.remove().await.unwrap();

        let changes = spaces
            .measure_commit(&repo, &commit, 1_000, 100_000)
            .await
            .unwrap();
        let paths: Vec<_> = changes.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [".github/workflows/x.yml", "README.md"]);
        assert_eq!(changes.lines(), 2);
        let proposal = crate::sink::policy::Proposal {
            changes: Some(&changes),
            ..Default::default()
        };
        let refused =
            crate::sink::policy::check(&crate::trigger::Limits::default(), &proposal).unwrap_err();
        assert_eq!(refused.rule, "limits.paths");
    }

    /// Commits `text` as `path` in the scratch clone and pushes it to main; returns the commit.
    fn push_file(work: &Path, path: &str, text: &str) -> String {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
        sh(work, &["add", "."]);
        sh(
            work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                path,
            ],
        );
        sh(work, &["push", "--quiet", "origin", "HEAD:main"]);
        sh(work, &["rev-parse", "HEAD"])
    }

    #[tokio::test]
    async fn a_commit_the_mirror_holds_needs_no_fetch_and_a_missing_one_is_always_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, work) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let first = sh(&work, &["rev-parse", "HEAD"]);
        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Commit(&first),
                JobId(1),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        wt.remove().await.unwrap();
        let second = push_file(&work, "README.md", "two\n");

        // The remote is gone: the commit the mirror holds is still checked out (no fetch was needed)...
        let moved = dir.path().join("moved.git");
        std::fs::rename(&bare, &moved).unwrap();
        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Commit(&first),
                JobId(2),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(wt.path.join("README.md")).unwrap(),
            "one\n"
        );
        wt.remove().await.unwrap();
        // ... and the one it does not is fetched for: the remote cannot be read, and the error says so.
        let error = spaces
            .prepare(
                &repo,
                url,
                Checkout::Commit(&second),
                JobId(3),
                1,
                &GitAuth::none(),
            )
            .await
            .err()
            .expect("a commit nobody can fetch is an error");
        let error = format!("{error:#}");
        assert!(
            error.contains("remote.git") && error.contains("cannot be read"),
            "{error}"
        );

        // With the remote back, the missing commit arrives.
        std::fs::rename(&moved, &bare).unwrap();
        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Commit(&second),
                JobId(4),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(wt.path.join("README.md")).unwrap(),
            "two\n"
        );
        wt.remove().await.unwrap();
    }

    #[tokio::test]
    async fn a_branch_the_mirror_holds_at_the_remotes_tip_needs_no_fetch_and_a_moved_one_is_fetched()
     {
        let dir = tempfile::tempdir().unwrap();
        let (bare, work) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let mirror = dir.path().join("data/mirrors/o/r.git");
        let job = |n: i64, branch: &'static str| {
            let (spaces, repo) = (&spaces, &repo);
            async move {
                let wt = spaces
                    .prepare(
                        repo,
                        url,
                        Checkout::Branch(branch),
                        JobId(n),
                        1,
                        &GitAuth::none(),
                    )
                    .await
                    .unwrap();
                let seen = (
                    wt.commit.clone(),
                    std::fs::read_to_string(wt.path.join("README.md")).unwrap(),
                );
                // The worktree nightshift wrote is one git knows, clean and at its commit, as the agent's
                // own git sees it.
                assert_eq!(sh(&wt.path, &["rev-parse", "HEAD"]), wt.commit);
                assert_eq!(sh(&wt.path, &["status", "--porcelain"]), "");
                let mirror = wt.mirror.to_str().unwrap().to_owned();
                let listed = sh(
                    &wt.path,
                    &["--git-dir", &mirror, "worktree", "list", "--porcelain"],
                );
                assert!(
                    listed.contains(&format!(
                        "worktree {}\nHEAD {}\ndetached",
                        wt.path.display(),
                        wt.commit
                    )),
                    "{listed}"
                );
                wt.remove().await.unwrap();
                seen
            }
        };
        let one = sh(&work, &["rev-parse", "HEAD"]);
        assert_eq!(job(1, "main").await, (one.clone(), "one\n".to_owned()));

        // A new branch elsewhere, main unchanged: main is checked out without a fetch (the mirror never
        // learns of the other branch), by its name or as the default branch.
        sh(
            &work,
            &["push", "--quiet", "origin", "HEAD:refs/heads/other"],
        );
        assert_eq!(job(2, "main").await, (one.clone(), "one\n".to_owned()));
        assert_eq!(job(3, "").await, (one.clone(), "one\n".to_owned()));
        let has_other = || {
            sh(
                dir.path(),
                &["--git-dir", mirror.to_str().unwrap(), "for-each-ref"],
            )
            .contains("refs/heads/other")
        };
        assert!(
            !has_other(),
            "main had not moved, yet the mirror was fetched"
        );

        // main moves, and a branch whose name ends like main's ref points at the commit the mirror still
        // has: only main's own ref counts, so it is fetched and the job gets the new commit.
        sh(
            &work,
            &[
                "push",
                "--quiet",
                "origin",
                "HEAD:refs/heads/x/refs/heads/main",
            ],
        );
        let two = push_file(&work, "README.md", "two\n");
        assert_eq!(job(4, "main").await, (two.clone(), "two\n".to_owned()));
        assert!(has_other());

        // Packed refs are read the same way: still no fetch while main stays where it is.
        sh(
            dir.path(),
            &["--git-dir", mirror.to_str().unwrap(), "pack-refs", "--all"],
        );
        sh(
            &work,
            &["push", "--quiet", "origin", "HEAD:refs/heads/third"],
        );
        assert_eq!(job(5, "main").await, (two.clone(), "two\n".to_owned()));
        let refs = sh(
            dir.path(),
            &["--git-dir", mirror.to_str().unwrap(), "for-each-ref"],
        );
        assert!(!refs.contains("refs/heads/third"), "{refs}");

        // A branch the mirror holds but the remote deleted: the worktree checked out at the mirror's tip
        // while the remote was asked is removed again, and the job gets a clear error.
        sh(
            &work,
            &["push", "--quiet", "origin", "HEAD:refs/heads/gone"],
        );
        assert_eq!(job(6, "gone").await.0, two);
        sh(&work, &["push", "--quiet", "origin", "--delete", "gone"]);
        let refused = spaces
            .prepare(
                &repo,
                url,
                Checkout::Branch("gone"),
                JobId(7),
                1,
                &GitAuth::none(),
            )
            .await
            .map(|wt| wt.commit)
            .unwrap_err();
        assert!(format!("{refused:#}").contains("gone"), "{refused:#}");
        assert!(!dir.path().join("data/worktrees/job-7-1").exists());
        assert!(!mirror.join("worktrees/job-7-1").exists());

        // A branch name that is no plain name is never read as a path of the mirror.
        for bad in ["../../HEAD", "/etc/passwd", "main/../main", "-main"] {
            assert_eq!(local_branch(&mirror, bad).await, None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_default_branch_context_kept_between_jobs_is_never_served_for_another_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, work) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let one = push_file(&work, "AGENTS.md", "one\n");
        let export = |job: i64| {
            let dest = dir.path().join(format!("context-{job}"));
            let spaces = &spaces;
            let repo = &repo;
            async move {
                let wt = spaces
                    .prepare(
                        repo,
                        url,
                        Checkout::Branch("main"),
                        JobId(job),
                        1,
                        &GitAuth::none(),
                    )
                    .await
                    .unwrap();
                let exported = spaces.export_context(repo, "main", &dest).await.unwrap();
                wt.remove().await.unwrap();
                let text = std::fs::read_to_string(dest.join("AGENTS.md")).unwrap();
                (exported.commit, exported.agents_md, text)
            }
        };
        assert_eq!(
            export(1).await,
            (
                one.clone(),
                vec!["AGENTS.md".to_owned()],
                "one\n".to_owned()
            )
        );
        // Kept: a second job at the same commit gets the same files, written for it.
        assert_eq!(
            export(2).await,
            (one, vec!["AGENTS.md".to_owned()], "one\n".to_owned())
        );
        // The default branch moves: the next job reads the new commit's instructions, not the kept ones.
        let two = push_file(&work, "AGENTS.md", "two\n");
        assert_eq!(
            export(3).await,
            (two, vec!["AGENTS.md".to_owned()], "two\n".to_owned())
        );
    }

    /// The one spare worktree of `dir`'s data dir (its folder), if there is one.
    fn the_spare(dir: &Path) -> Option<PathBuf> {
        let spares: Vec<PathBuf> = std::fs::read_dir(dir.join("data/git/spares"))
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(spares.len() <= 1, "{spares:?}");
        spares.into_iter().next()
    }

    /// The spare's index trusts its regular files' stat data (no entry as new as the index, none
    /// smudged), so the job's `reset --hard` reads no file it need not.
    fn assert_settled(spare: &Path) {
        use std::os::unix::fs::MetadataExt;
        let index = std::fs::metadata(spare.join("git/index")).unwrap().mtime();
        let out = StdCommand::new("git")
            .args(["ls-files", "--debug"])
            .env("GIT_DIR", spare.join("git"))
            .env("GIT_WORK_TREE", spare.join("tree"))
            .output()
            .unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        let (mut entries, mut sizes) = (0, 0);
        // Links are never touched (their targets could be anyone's): git reads a link again cheaply.
        let mut link = false;
        for raw in listing.lines() {
            let line = raw.trim();
            if !raw.starts_with(' ') {
                link = spare.join("tree").join(line).is_symlink();
            } else if link {
            } else if let Some(mtime) = line.strip_prefix("mtime: ") {
                entries += 1;
                let secs: i64 = mtime.split(':').next().unwrap().parse().unwrap();
                assert!(secs < index, "an entry as new as the index:\n{listing}");
            } else if let Some(size) = line.strip_prefix("size: ") {
                let size: u64 = size.split_whitespace().next().unwrap().parse().unwrap();
                assert!(size > 0, "a smudged entry:\n{listing}");
                sizes += 1;
            }
        }
        assert!(entries > 0 && entries == sizes, "{listing}");
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[tokio::test]
    async fn a_job_takes_the_spare_checked_out_ahead_and_never_a_worktree_a_job_used() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, work) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let prepare = |n: i64| {
            let (spaces, repo) = (&spaces, &repo);
            async move {
                spaces
                    .prepare(
                        repo,
                        url,
                        Checkout::Branch("main"),
                        JobId(n),
                        1,
                        &GitAuth::none(),
                    )
                    .await
                    .unwrap()
            }
        };
        // Clean and at its commit, as the agent's own git sees it.
        let clean = |wt: &Worktree| {
            assert_eq!(sh(&wt.path, &["rev-parse", "HEAD"]), wt.commit);
            assert_eq!(sh(&wt.path, &["status", "--porcelain", "--ignored"]), "");
        };
        // A hostile repository holds a link to a file of the service's.
        let outside = dir.path().join("service-file");
        std::fs::write(&outside, "the service's\n").unwrap();
        let outside_time = std::fs::metadata(&outside).unwrap().modified().unwrap();
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        sh(&work, &["add", "link"]);
        sh(
            &work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                "link",
            ],
        );
        sh(&work, &["push", "--quiet", "origin", "HEAD:main"]);
        let one = sh(&work, &["rev-parse", "HEAD"]);

        let first = prepare(1).await;
        assert!(the_spare(dir.path()).is_none(), "no spare before a refill");
        spaces.refill_spare(&repo).await.unwrap();
        let spare = the_spare(dir.path()).expect("a spare after the refill");
        let spare_file = inode(&spare.join("tree/README.md"));
        let spare_index = inode(&spare.join("git/index"));
        assert_settled(&spare);
        // The repository's link to a file outside it is settled as a link: what it points at keeps its time.
        assert_eq!(
            std::fs::metadata(&outside).unwrap().modified().unwrap(),
            outside_time
        );
        // The first job's agent writes its worktree; the worktree goes with the job.
        std::fs::write(first.path.join("planted.txt"), "from the agent\n").unwrap();
        std::fs::write(first.path.join("README.md"), "changed by the agent\n").unwrap();
        first.remove().await.unwrap();

        let second = prepare(2).await;
        assert_eq!(second.commit, one);
        assert_eq!(
            inode(&second.path.join("README.md")),
            spare_file,
            "the second job got the spare"
        );
        // At the job's commit and untouched, it is used as it is: no `reset` wrote its index again.
        assert_eq!(inode(&second.git_dir.join("index")), spare_index);
        assert!(!second.path.join("planted.txt").exists());
        assert_eq!(
            std::fs::read_to_string(second.path.join("README.md")).unwrap(),
            "one\n"
        );
        clean(&second);
        assert!(the_spare(dir.path()).is_none(), "a spare serves one job");
        second.remove().await.unwrap();

        // A spare changed after it was made (a tracked file rewritten at its size with its time set back, a
        // file planted beside it) is not used: the job gets a worktree of its own, and the spare is removed.
        spaces.refill_spare(&repo).await.unwrap();
        let spare = the_spare(dir.path()).unwrap();
        let readme = spare.join("tree/README.md");
        let settled_time = std::fs::metadata(&readme).unwrap().modified().unwrap();
        std::fs::write(&readme, "ONE\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&readme)
            .unwrap()
            .set_modified(settled_time)
            .unwrap();
        std::fs::write(spare.join("tree/planted.txt"), "left in the spare\n").unwrap();
        let third = prepare(3).await;
        assert!(!spare.exists(), "a changed spare is removed");
        assert_eq!(
            std::fs::read_to_string(third.path.join("README.md")).unwrap(),
            "one\n"
        );
        assert!(!third.path.join("planted.txt").exists());
        clean(&third);
        third.remove().await.unwrap();

        // The branch moved: the spare (at the old tip) is moved to the new commit.
        spaces.refill_spare(&repo).await.unwrap();
        let spare = the_spare(dir.path()).unwrap();
        assert!(spare.join("tree/.git").is_file());
        let two = push_file(&work, "README.md", "two\n");
        let fourth = prepare(4).await;
        assert_eq!(fourth.commit, two);
        assert_eq!(
            std::fs::read_to_string(fourth.path.join("README.md")).unwrap(),
            "two\n"
        );
        assert_eq!(
            std::fs::read_to_string(fourth.path.join(".git")).unwrap(),
            format!("gitdir: {}\n", fourth.git_dir.display()),
            ".git is written afresh"
        );
        clean(&fourth);
        fourth.remove().await.unwrap();

        // A spare whose git folder holds a file nightshift did not write is refused, and removed.
        spaces.refill_spare(&repo).await.unwrap();
        let spare = the_spare(dir.path()).unwrap();
        std::fs::write(
            spare.join("git/config.worktree"),
            "[core]\n\thooksPath = /tmp/planted\n",
        )
        .unwrap();
        let fifth = prepare(5).await;
        assert!(!spare.exists());
        assert!(!fifth.git_dir.join("config.worktree").exists());
        clean(&fifth);
        fifth.remove().await.unwrap();
    }

    #[tokio::test]
    async fn spares_a_dead_run_left_are_removed_and_a_job_that_fails_leaves_the_spare_unused() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, _) = remote(dir.path());
        let spaces = spaces_in(dir.path());
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();
        let left = dir.path().join("data/git/spares/999999999-1-0");
        std::fs::create_dir_all(left.join("tree")).unwrap();
        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Branch("main"),
                JobId(1),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        wt.remove().await.unwrap();
        spaces.refill_spare(&repo).await.unwrap();
        assert!(!left.exists(), "a dead run's spare is removed");
        let spare = the_spare(dir.path()).unwrap();
        // A job for a commit the repository does not have fails; the spare stays for the next job.
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert!(
            spaces
                .prepare(
                    &repo,
                    url,
                    Checkout::Commit(missing),
                    JobId(2),
                    1,
                    &GitAuth::none()
                )
                .await
                .is_err()
        );
        assert_eq!(the_spare(dir.path()), Some(spare.clone()));
        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Branch("main"),
                JobId(3),
                1,
                &GitAuth::none(),
            )
            .await
            .unwrap();
        assert!(!spare.exists(), "the next job took it");
        wt.remove().await.unwrap();
    }
}
