//! Workspaces: one bare mirror per repository under the data dir, cloned once and fetched after (under a
//! per-repository lock), and one `git worktree` per job at the exact commit, removed when the job ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::Mutex;

use super::git::{GitAuth, git};
use crate::ids::{JobId, RepoName};

pub struct Workspaces {
    root: PathBuf,
    locks: std::sync::Mutex<HashMap<RepoName, Arc<Mutex<()>>>>,
}

/// A job's worktree; call [`Worktree::remove`] when the job ends.
pub struct Worktree {
    pub path: PathBuf,
    pub commit: String,
    /// The repository's default branch, as the mirror's HEAD names it.
    pub default_branch: String,
    /// The worktree's own git folder (index, HEAD) inside the mirror.
    pub git_dir: PathBuf,
    mirror: PathBuf,
    /// The repository's lock: git's worktree bookkeeping in the mirror is not safe to change concurrently
    /// (removing the last worktree deletes the folder another `worktree add` is writing into).
    lock: Arc<Mutex<()>>,
}

/// Which commit a job works on.
pub enum Checkout<'a> {
    /// A branch of the repository (the default branch for issue events); empty for the default branch
    /// whatever its name.
    Branch(&'a str),
    /// An exact commit (a pull request's head).
    Commit(&'a str),
}

impl Workspaces {
    pub fn new(data_dir: &Path) -> Workspaces {
        Workspaces {
            root: std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned()),
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn mirror_path(&self, repo: &RepoName) -> PathBuf {
        self.root
            .join("mirrors")
            .join(repo.owner())
            .join(format!("{}.git", repo.name()))
    }

    fn lock(&self, repo: &RepoName) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(repo.clone()).or_default().clone()
    }

    /// Brings the mirror up to date and adds a worktree for `job` at the commit `checkout` names.
    pub async fn prepare(
        &self,
        repo: &RepoName,
        clone_url: &str,
        checkout: Checkout<'_>,
        job: JobId,
        auth: &GitAuth,
    ) -> Result<Worktree> {
        let mirror = self.mirror_path(repo);
        let path = self.root.join("worktrees").join(format!("job-{job}"));
        let lock = self.lock(repo);
        let guard = lock.lock().await;
        update_mirror(repo, &mirror, clone_url, auth).await?;
        let commit = match checkout {
            Checkout::Commit(sha) => sha.to_owned(),
            Checkout::Branch(branch) => branch_tip(repo, &mirror, branch).await?,
        };
        // A worktree left behind by a run that died is replaced.
        if path.exists() {
            let _ = git(
                &mirror,
                &["worktree", "remove", "--force", path_str(&path)?],
                &GitAuth::none(),
            )
            .await;
            let _ = tokio::fs::remove_dir_all(&path).await;
        }
        git(&mirror, &["worktree", "prune"], &GitAuth::none()).await?;
        tokio::fs::create_dir_all(path.parent().context("worktree path has no parent")?).await?;
        // Only the bookkeeping happens under the lock; the checkout itself (the slow part on a large
        // repository) runs after it is released, so jobs on one repository wait for each other only for
        // the fetch.
        git(
            &mirror,
            &[
                "worktree",
                "add",
                "--detach",
                "--force",
                "--no-checkout",
                "--quiet",
                path_str(&path)?,
                &commit,
            ],
            &GitAuth::none(),
        )
        .await
        .with_context(|| format!("adding a worktree at {commit} of {repo}"))?;
        let default_branch = git(
            &mirror,
            &["symbolic-ref", "--short", "HEAD"],
            &GitAuth::none(),
        )
        .await
        .map(|b| b.trim().to_owned())
        .unwrap_or_default();
        let git_dir = PathBuf::from(
            git(
                &path,
                &["rev-parse", "--absolute-git-dir"],
                &GitAuth::none(),
            )
            .await?
            .trim(),
        );
        drop(guard);
        let worktree = Worktree {
            path,
            commit,
            default_branch,
            git_dir,
            mirror,
            lock,
        };
        if let Err(e) = git(
            &worktree.path,
            &["reset", "--hard", "--quiet"],
            &GitAuth::none(),
        )
        .await
        {
            let commit = worktree.commit.clone();
            let _ = worktree.remove().await;
            return Err(e.context(format!("checking out {commit} of {repo}")));
        }
        Ok(worktree)
    }
}

/// Clones the mirror (into a temporary name, renamed when complete, so a crash mid-clone never leaves a
/// broken mirror) or fetches into it. The caller holds the repository's lock.
async fn update_mirror(
    repo: &RepoName,
    mirror: &Path,
    clone_url: &str,
    auth: &GitAuth,
) -> Result<()> {
    if mirror.join("HEAD").exists() {
        git(
            mirror,
            &["fetch", "--prune", "--quiet", clone_url, "+refs/*:refs/*"],
            auth,
        )
        .await
        .with_context(|| format!("fetching {repo}"))?;
        return Ok(());
    }
    let parent = mirror.parent().context("mirror path has no parent")?;
    tokio::fs::create_dir_all(parent)
        .await
        .with_context(|| format!("creating {}", parent.display()))?;
    let partial = mirror.with_extension("partial");
    let _ = tokio::fs::remove_dir_all(&partial).await;
    git(
        parent,
        &[
            "clone",
            "--mirror",
            "--quiet",
            clone_url,
            path_str(&partial)?,
        ],
        auth,
    )
    .await
    .with_context(|| format!("cloning {repo}"))?;
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
}

impl Workspaces {
    /// Brings the mirror up to date and reads the files directly in `dir` (not below) whose names end in
    /// one of `extensions`, from the tip of `branch` (the mirror's HEAD, the default branch, when empty).
    /// Never from anything but that branch: a pull request cannot change what this returns.
    pub async fn read_files(
        &self,
        repo: &RepoName,
        clone_url: &str,
        branch: &str,
        dir: &str,
        extensions: &[&str],
        auth: &GitAuth,
    ) -> Result<FilesAt> {
        let mirror = self.mirror_path(repo);
        let lock = self.lock(repo);
        let _guard = lock.lock().await;
        update_mirror(repo, &mirror, clone_url, auth).await?;
        let commit = branch_tip(repo, &mirror, branch).await?;
        let listing = git(
            &mirror,
            &["ls-tree", "--name-only", "-z", &commit, &format!("{dir}/")],
            &GitAuth::none(),
        )
        .await?;
        let mut files = Vec::new();
        for path in listing
            .split('\0')
            .filter(|p| extensions.iter().any(|e| p.ends_with(e)))
        {
            let text = git(
                &mirror,
                &["show", &format!("{commit}:{path}")],
                &GitAuth::none(),
            )
            .await?;
            files.push((path.to_owned(), text));
        }
        files.sort();
        Ok(FilesAt { commit, files })
    }

    /// Copies what the repository says about itself from the tip of its default branch (the mirror must be
    /// up to date: call after [`Workspaces::prepare`]) into `dest`: its `AGENTS.md` files and its skills
    /// (`.agents/skills/`, `.claude/skills/`). Never from the job's own commit, so a pull request cannot
    /// change the instructions or skills its own review runs with. Returns the commit and the `AGENTS.md`
    /// paths.
    pub async fn export_context(
        &self,
        repo: &RepoName,
        branch: &str,
        dest: &Path,
    ) -> Result<(String, Vec<String>)> {
        let mirror = self.mirror_path(repo);
        let none = GitAuth::none();
        let commit = branch_tip(repo, &mirror, branch).await?;
        let listing = git(
            &mirror,
            &["ls-tree", "-r", "--name-only", "-z", &commit],
            &none,
        )
        .await?;
        let mut agents_md = Vec::new();
        let mut skill_roots = Vec::new();
        for path in listing.split('\0').filter(|p| !p.is_empty()) {
            if path == "AGENTS.md" || path.ends_with("/AGENTS.md") {
                agents_md.push(path.to_owned());
            }
            for root in crate::skill::WORKTREE_ROOTS {
                if path.starts_with(root)
                    && path.as_bytes().get(root.len()) == Some(&b'/')
                    && !skill_roots.contains(&root)
                {
                    skill_roots.push(root);
                }
            }
        }
        tokio::fs::create_dir_all(dest).await?;
        let wanted: Vec<&str> = agents_md
            .iter()
            .map(String::as_str)
            .chain(skill_roots.iter().copied())
            .collect();
        if !wanted.is_empty() {
            let tar = dest.join(".context.tar");
            let mut args = vec![
                "archive",
                "--format=tar",
                "--output",
                path_str(&tar)?,
                &commit,
                "--",
            ];
            args.extend(&wanted);
            git(&mirror, &args, &none).await?;
            let out = tokio::process::Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(dest)
                .output()
                .await
                .context("running tar (is it installed?)")?;
            anyhow::ensure!(
                out.status.success(),
                "unpacking the repository's context failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let _ = tokio::fs::remove_file(&tar).await;
        }
        Ok((commit, agents_md))
    }

    /// Removes job `job`'s worktree, if one is left (the job was stopped before it could clean up).
    pub async fn discard(&self, repo: &RepoName, job: JobId) -> Result<()> {
        let path = self.root.join("worktrees").join(format!("job-{job}"));
        let mirror = self.mirror_path(repo);
        let lock = self.lock(repo);
        let _guard = lock.lock().await;
        if path.exists() {
            tokio::fs::remove_dir_all(&path)
                .await
                .with_context(|| format!("removing {}", path.display()))?;
        }
        if mirror.join("HEAD").exists() {
            git(&mirror, &["worktree", "prune"], &GitAuth::none()).await?;
        }
        Ok(())
    }
}

impl Worktree {
    pub async fn remove(self) -> Result<()> {
        let _guard = self.lock.lock().await;
        git(
            &self.mirror,
            &["worktree", "remove", "--force", path_str(&self.path)?],
            &GitAuth::none(),
        )
        .await?;
        Ok(())
    }
}

/// The commit at the tip of `branch` in the mirror (its HEAD, the default branch, when empty).
async fn branch_tip(repo: &RepoName, mirror: &Path, branch: &str) -> Result<String> {
    let rev = if branch.is_empty() {
        "HEAD^{commit}".to_owned()
    } else {
        format!("refs/heads/{branch}^{{commit}}")
    };
    Ok(
        git(mirror, &["rev-parse", "--verify", &rev], &GitAuth::none())
            .await
            .with_context(|| format!("{repo} has no branch `{branch}`"))?
            .trim()
            .to_owned(),
    )
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
        let spaces = Workspaces::new(&dir.path().join("data"));
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap();

        let wt = spaces
            .prepare(
                &repo,
                url,
                Checkout::Branch("main"),
                JobId(1),
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
        let spaces = Arc::new(Workspaces::new(&dir.path().join("data")));
        let repo = RepoName::parse("o/r").unwrap();
        let url = bare.to_str().unwrap().to_owned();
        let mut tasks = Vec::new();
        for task in 0..8 {
            let (spaces, repo, url) = (spaces.clone(), repo.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..6 {
                    let job = JobId(task * 100 + round);
                    let wt = spaces
                        .prepare(&repo, &url, Checkout::Branch("main"), job, &GitAuth::none())
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
        let spaces = Workspaces::new(&dir.path().join("data"));
        let repo = RepoName::parse("o/r").unwrap();
        let err = spaces
            .prepare(
                &repo,
                bare.to_str().unwrap(),
                Checkout::Branch("nope"),
                JobId(1),
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
}
