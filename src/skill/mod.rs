//! Skills in the open Agent Skills format: `<root>/<name>/SKILL.md` with YAML front matter and a Markdown
//! body. This module reads and checks them as the specification does, finds them in the service's `skills/`
//! folder and in a job's worktree (`.agents/skills/`, `.claude/skills/`; a repository's skill overrides the
//! service's of the same name), selects the ones a trigger names, and puts the selected service skills where
//! the agent CLIs look for them in the worktree for the duration of the job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::yaml::Diagnostic;

/// Where agents look for project skills: Codex (and most clients) in `.agents/skills`, Claude Code in
/// `.claude/skills`.
pub const WORKTREE_ROOTS: [&str; 2] = [".agents/skills", ".claude/skills"];

/// A checked skill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skill {
    pub name: String,
    pub description: String,
    /// The skill's folder.
    pub dir: PathBuf,
    /// Where it came from, for the job log: `service` or the repository folder it was found in.
    pub source: String,
    /// The Markdown after the front matter: the instructions.
    pub body: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    name: String,
    description: String,
    license: Option<String>,
    compatibility: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "allowed-tools")]
    allowed_tools: Option<String>,
}

/// The front matter of `SKILL.md`: the text between the opening `---` line and the next `---` line, and
/// the line the YAML starts on.
fn front_matter(text: &str) -> Option<(&str, usize)> {
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))?;
    let end = rest.find("\n---").map(|i| i + 1)?;
    Some((&rest[..end], 2))
}

/// Whether `name` is a valid skill name: 1–64 of a-z, 0-9 and `-`, not at either end, no `--`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Reads and checks the skill in `dir`, reporting every problem.
pub fn read(dir: &Path, source: &str) -> Result<Skill, Vec<Diagnostic>> {
    let file = dir.join("SKILL.md");
    let cannot = |why: String| {
        vec![Diagnostic::new(
            &file,
            1,
            1,
            format!("cannot read the skill: {why}"),
        )]
    };
    // Never through a symlink, never a FIFO, never more than the cap.
    let text = match crate::safe_fs::read_beneath(dir, "SKILL.md", SKILL_MD_MAX) {
        Ok(Some(f)) if f.truncated => {
            return Err(cannot(format!(
                "SKILL.md is longer than {SKILL_MD_MAX} bytes"
            )));
        }
        Ok(Some(f)) => {
            String::from_utf8(f.bytes).map_err(|_| cannot("SKILL.md is not UTF-8".into()))?
        }
        Ok(None) => return Err(cannot("there is no SKILL.md".into())),
        Err(e) => return Err(cannot(e.to_string())),
    };
    let Some((yaml, first_line)) = front_matter(&text) else {
        return Err(vec![
            Diagnostic::new(
                &file,
                1,
                1,
                "SKILL.md does not start with YAML front matter",
            )
            .with_hint("start the file with ---, then name: and description:, then ---"),
        ]);
    };
    let fm: FrontMatter = crate::yaml::from_str(&file, yaml).map_err(|mut d| {
        d.line += first_line as u64 - 1;
        vec![d]
    })?;
    let mut errors = Vec::new();
    let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !valid_name(&fm.name) {
        errors.push(
            Diagnostic::new(
                &file,
                first_line as u64,
                1,
                format!("`{}` is not a valid skill name", fm.name),
            )
            .with_hint(
                "1 to 64 lowercase letters, digits and single hyphens, e.g. review-checklist",
            ),
        );
    } else if fm.name != folder {
        errors.push(
            Diagnostic::new(
                &file,
                first_line as u64,
                1,
                format!(
                    "the skill is named `{}` but its folder is `{folder}`",
                    fm.name
                ),
            )
            .with_hint("a skill's name must equal its folder's name"),
        );
    }
    let description_chars = fm.description.trim().chars().count();
    if description_chars == 0 || description_chars > 1024 {
        errors.push(
            Diagnostic::new(
                &file,
                first_line as u64,
                1,
                format!("the description has {description_chars} characters; it needs 1 to 1024"),
            )
            .with_hint("say what the skill does and when to use it"),
        );
    }
    if fm
        .compatibility
        .as_ref()
        .is_some_and(|c| c.chars().count() > 500)
    {
        errors.push(Diagnostic::new(
            &file,
            first_line as u64,
            1,
            "`compatibility` is longer than 500 characters",
        ));
    }
    let _ = (&fm.license, &fm.metadata, &fm.allowed_tools);
    // The body starts on the line after the closing `---`.
    let after_yaml = yaml.as_ptr() as usize - text.as_ptr() as usize + yaml.len();
    let body = text[after_yaml..]
        .split_once('\n')
        .map(|(_, rest)| rest.trim_start_matches(['\r', '\n']).to_owned())
        .unwrap_or_default();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Skill {
        name: fm.name,
        description: fm.description.trim().to_owned(),
        dir: dir.to_owned(),
        source: source.to_owned(),
        body,
    })
}

/// The most of one `SKILL.md` nightshift reads.
pub const SKILL_MD_MAX: usize = 256 * 1024;

/// The skills directly under `root` (one folder each), and the problems of the invalid ones. A symlinked
/// skill folder is followed only in the service's own `skills/` (the operator's); in a repository's folders
/// it is skipped, with a problem saying so.
pub fn discover(root: &Path, source: &str) -> (Vec<Skill>, Vec<Diagnostic>) {
    let mut skills = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return (skills, problems);
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let dir = match (is_link, source == "service") {
            (false, _) => path,
            (true, true) => match std::fs::canonicalize(&path) {
                Ok(target) => target,
                Err(_) => continue,
            },
            (true, false) => {
                problems.push(
                    Diagnostic::new(&path, 1, 1, "skipped: the skill's folder is a symlink")
                        .with_hint("a repository's skills must be plain folders"),
                );
                continue;
            }
        };
        let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if is_dir && present(&dir.join("SKILL.md")).unwrap_or(false) {
            dirs.push(dir);
        }
    }
    dirs.sort();
    for dir in dirs {
        match read(&dir, source) {
            Ok(skill) => skills.push(skill),
            Err(mut ds) => problems.append(&mut ds),
        }
    }
    (skills, problems)
}

/// The skills a job can use: the service's, overridden by the repository's of the same name (found under
/// `repo_root`, a copy of the repository's default branch or a checkout).
pub fn available(
    service_root: &Path,
    repo_root: &Path,
) -> (BTreeMap<String, Skill>, Vec<Diagnostic>) {
    let (service, mut problems) = discover(service_root, "service");
    let mut all: BTreeMap<String, Skill> =
        service.into_iter().map(|s| (s.name.clone(), s)).collect();
    for root in WORKTREE_ROOTS {
        let (repo, mut more) = discover(&repo_root.join(root), root);
        problems.append(&mut more);
        for skill in repo {
            all.insert(skill.name.clone(), skill);
        }
    }
    (all, problems)
}

/// The skills and where each came from, for the job log: `review-checklist (service), style (.agents/skills)`.
pub fn describe(skills: &[Skill]) -> String {
    skills
        .iter()
        .map(|s| format!("{} ({})", s.name, s.source))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The skills a job gets: the named ones (every one must exist; none named, none), or all of them.
pub fn select(
    available: &BTreeMap<String, Skill>,
    names: &[String],
    all: bool,
) -> Result<Vec<Skill>, String> {
    if all {
        return Ok(available.values().cloned().collect());
    }
    names
        .iter()
        .map(|n| {
            available.get(n).cloned().ok_or_else(|| {
                let known: Vec<&str> = available.keys().map(String::as_str).collect();
                format!("skill `{n}` is neither in the service's skills nor in the repository's (known: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })
            })
        })
        .collect()
}

/// The worktree folders nightshift takes over for the length of a job: Codex's skills, and all of
/// `.claude` (Claude Code's skills, but also its settings, hooks and commands, which a pull request could
/// change to run anything).
/// A commit of the worktree keeps them as the job's commit has them (`Worktree::tree_now`).
pub const STAGED: [&str; 2] = [".agents/skills", ".claude"];

/// A worktree whose skill folders hold exactly a job's skills; [`Staged::restore`] puts back what was there.
#[derive(Debug)]
pub struct Staged {
    worktree: PathBuf,
    stash: PathBuf,
    /// (folder in the worktree, where its original waits).
    moved: Vec<(PathBuf, PathBuf)>,
    /// Whether `.agents` was created for the job.
    created_agents: bool,
    /// What was left out while copying (symlinks and other non-regular files in a skill), for the job log.
    pub notes: Vec<String>,
}

fn refused(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

/// Whether `path` is there at all, without following a symlink at its end.
fn present(path: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The first component of `rel` below `base` (itself included) that is a symlink, if any. Nothing below a
/// missing component is looked at.
fn linked_component(base: &Path, rel: &str) -> std::io::Result<Option<PathBuf>> {
    let mut path = base.to_owned();
    let mut shown = PathBuf::new();
    for part in Path::new(rel).components() {
        path.push(part);
        shown.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Ok(Some(shown)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Fails when `dir` (a folder nightshift made or owns) has been replaced by a symlink or anything but a folder.
fn real_dir(dir: &Path, what: &str) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(refused(format!(
            "{what} is no longer a folder (a symlink or a file took its place); nightshift does not follow it"
        ))),
        Err(e) => Err(e),
    }
}

/// Puts exactly `skills` where the agent CLIs look for them in the worktree (`.agents/skills/NAME` for
/// Codex, `.claude/skills/NAME` for Claude Code): the worktree's own skill folders are moved to `stash`
/// for the length of the job, so a pull request's skills or Claude settings are not the ones its job runs
/// with, and a job sees only the skills its trigger names.
///
/// Skills are copied, never moved or linked (the agent may edit the copies; the originals, the service's own
/// `skills/` among them, are never within its reach), and without following symlinks: a symlink in a skill
/// is left out and said in [`Staged::notes`]. A worktree whose `.agents`, `.agents/skills` or `.claude` is a
/// symlink is refused: nightshift never moves or writes through a link a repository planted.
pub fn stage(skills: &[Skill], worktree: &Path, stash: &Path) -> std::io::Result<Staged> {
    for folder in STAGED {
        if let Some(link) = linked_component(worktree, folder)? {
            return Err(refused(format!(
                "the worktree's {} is a symlink; nightshift does not stage skills through links",
                link.display()
            )));
        }
    }
    let mut staged = Staged {
        worktree: worktree.to_owned(),
        stash: stash.to_owned(),
        moved: Vec::new(),
        created_agents: !present(&worktree.join(".agents"))?,
        notes: Vec::new(),
    };
    for (i, folder) in STAGED.iter().enumerate() {
        let path = worktree.join(folder);
        if present(&path)? {
            std::fs::create_dir_all(stash)?;
            real_dir(stash, "the job's stash")?;
            let aside = stash.join(i.to_string());
            // Left by an attempt that died mid-job (its worktree is gone; this is stale).
            if present(&aside)? {
                crate::safe_fs::remove_tree(&aside)?;
            }
            std::fs::rename(&path, &aside)?;
            staged.moved.push((path, aside));
        }
    }
    for skill in skills {
        for root in WORKTREE_ROOTS {
            let shown = format!("{root}/{}", skill.name);
            copy_dir(
                &skill.dir,
                &worktree.join(root).join(&skill.name),
                &shown,
                &mut staged.notes,
            )?;
        }
    }
    Ok(staged)
}

impl Staged {
    /// Removes the job's skill folders and puts the worktree's own back, so they are not part of its changes.
    ///
    /// The agent had the worktree and the job folder to itself: a symlink it left in place of `.agents`,
    /// `.agents/skills`, `.claude` or the stash is removed (the link, never what it points at) and the job
    /// fails with why, after everything that can be put back safely is.
    pub fn restore(self) -> std::io::Result<()> {
        let mut problems = Vec::new();
        for folder in STAGED {
            match linked_component(&self.worktree, folder)? {
                Some(link) => {
                    // The link itself goes (remove_file on a symlink never touches its target).
                    std::fs::remove_file(self.worktree.join(&link))?;
                    problems.push(format!(
                        "the agent replaced {} with a symlink (removed; its target was not touched)",
                        link.display()
                    ));
                }
                None => {
                    let path = self.worktree.join(folder);
                    match std::fs::symlink_metadata(&path) {
                        // No component above `path` is a link, and `remove_tree` follows none below.
                        Ok(m) if m.is_dir() => crate::safe_fs::remove_tree(&path)?,
                        // A file the agent put in the folder's place.
                        Ok(_) => std::fs::remove_file(&path)?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if self.created_agents {
            let _ = std::fs::remove_dir(self.worktree.join(".agents"));
        }
        if !self.moved.is_empty()
            && let Err(e) = real_dir(&self.stash, "the job's stash")
        {
            problems.push(e.to_string());
        } else {
            for (path, aside) in &self.moved {
                if let Err(e) = real_dir(aside, "a stashed skill folder") {
                    problems.push(e.to_string());
                    continue;
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(aside, path)?;
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(refused(problems.join("; ")))
        }
    }
}

/// Copies the folder `from` to `to`: folders and regular files only, never following a symlink (one is left
/// out, and said in `notes` by its path `shown`).
fn copy_dir(from: &Path, to: &Path, shown: &str, notes: &mut Vec<String>) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let target = to.join(&name);
        let here = format!("{shown}/{}", name.to_string_lossy());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target, &here, notes)?;
        } else if kind.is_file() {
            copy_file(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            notes.push(format!(
                "skipped {here} in a skill: a symlink (nightshift copies only regular files)"
            ));
        } else {
            notes.push(format!("skipped {here} in a skill: not a regular file"));
        }
    }
    Ok(())
}

/// Copies a regular file, refusing to open a symlink or block on anything else.
fn copy_file(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut source = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)?;
    let meta = source.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused(format!("{} is not a regular file", from.display())));
    }
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.permissions().mode() & 0o755)
        .open(to)?;
    std::io::copy(&mut source, &mut target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_skill(root: &Path, folder: &str, front: &str) {
        let dir = root.join(folder);
        std::fs::create_dir_all(dir.join("references")).unwrap();
        std::fs::write(dir.join("SKILL.md"), format!("---\n{front}---\n\n# Body\n")).unwrap();
        std::fs::write(dir.join("references/more.md"), "more").unwrap();
    }

    #[test]
    fn names_follow_the_specification() {
        for good in ["a", "review-checklist", "rust2024"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a--b", "Review", "a_b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_skills_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        write_skill(
            dir.path(),
            "good",
            "name: good\ndescription: Does good things. Use when good.\n",
        );
        write_skill(dir.path(), "other", "name: wrong\ndescription: x\n");
        write_skill(dir.path(), "empty", "name: empty\ndescription: ''\n");
        write_skill(
            dir.path(),
            "extra",
            "name: extra\ndescription: x\nversion: 2\n",
        );
        let (skills, problems) = discover(dir.path(), "service");
        assert_eq!(
            skills.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].contains("empty/SKILL.md:2:1: error: the description has 0 characters"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains("extra/SKILL.md:4:1: error: unknown field `version`"),
            "{}",
            text[1]
        );
        assert!(
            text[2].contains(
                "other/SKILL.md:2:1: error: the skill is named `wrong` but its folder is `other`"
            ),
            "{}",
            text[2]
        );
    }

    #[test]
    fn repository_skills_override_service_skills_and_selection_is_strict() {
        let service = tempfile::tempdir().unwrap();
        let worktree = tempfile::tempdir().unwrap();
        write_skill(
            service.path(),
            "style",
            "name: style\ndescription: Service style.\n",
        );
        write_skill(
            service.path(),
            "review",
            "name: review\ndescription: Service review.\n",
        );
        write_skill(
            &worktree.path().join(".agents/skills"),
            "style",
            "name: style\ndescription: Repo style.\n",
        );
        let (available, problems) = available(service.path(), worktree.path());
        assert!(problems.is_empty());
        assert_eq!(available["style"].description, "Repo style.");
        assert_eq!(available["style"].source, ".agents/skills");
        let picked = select(&available, &["review".into()], false).unwrap();
        assert_eq!(picked[0].source, "service");
        assert!(
            select(&available, &["nope".into()], false)
                .unwrap_err()
                .contains("skill `nope`")
        );
        assert_eq!(select(&available, &[], true).unwrap().len(), 2);

        // Staged: exactly the picked skills in both places; the repository's own folders wait aside,
        // Claude settings included, and come back as they were.
        std::fs::create_dir_all(worktree.path().join(".claude")).unwrap();
        std::fs::write(worktree.path().join(".claude/settings.json"), "{}").unwrap();
        let stash = tempfile::tempdir().unwrap();
        let staged = stage(&picked, worktree.path(), stash.path()).unwrap();
        let w = worktree.path();
        assert!(w.join(".agents/skills/review/SKILL.md").is_file());
        assert!(w.join(".claude/skills/review/references/more.md").is_file());
        assert!(!w.join(".agents/skills/style").exists(), "not picked");
        assert!(!w.join(".claude/settings.json").exists());
        staged.restore().unwrap();
        assert!(!w.join(".agents/skills/review").exists());
        assert!(!w.join(".claude/skills").exists());
        assert!(w.join(".claude/settings.json").is_file());
        assert!(
            w.join(".agents/skills/style/SKILL.md").is_file(),
            "the repository's own skill is back"
        );

        // An attempt that died before restoring left its stash; the next attempt (a fresh worktree) works.
        let again = tempfile::tempdir().unwrap();
        write_skill(
            &again.path().join(".agents/skills"),
            "style",
            "name: style\ndescription: Repo style.\n",
        );
        let died = stage(&picked, again.path(), stash.path()).unwrap();
        std::mem::forget(died);
        let fresh = tempfile::tempdir().unwrap();
        write_skill(
            &fresh.path().join(".agents/skills"),
            "style",
            "name: style\ndescription: Repo style.\n",
        );
        stage(&picked, fresh.path(), stash.path())
            .unwrap()
            .restore()
            .unwrap();
        assert!(fresh.path().join(".agents/skills/style/SKILL.md").is_file());

        // Nothing was there before: nothing is left after.
        let empty = tempfile::tempdir().unwrap();
        let staged = stage(&picked, empty.path(), stash.path()).unwrap();
        staged.restore().unwrap();
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    }

    fn service_with_one_skill() -> (tempfile::TempDir, Vec<Skill>) {
        let service = tempfile::tempdir().unwrap();
        let skills = service.path().join("skills");
        write_skill(
            &skills,
            "review",
            "name: review\ndescription: Service review.\n",
        );
        let (found, problems) = discover(&skills, "service");
        assert!(problems.is_empty(), "{problems:?}");
        (service, found)
    }

    fn tree(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                for (sub, text) in tree(&p) {
                    out.push((format!("{name}/{sub}"), text));
                }
            } else {
                out.push((name, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn an_agent_linking_agents_to_the_service_skills_cannot_make_the_clean_up_touch_them() {
        let (service, picked) = service_with_one_skill();
        let before = tree(service.path());
        let worktree = tempfile::tempdir().unwrap();
        let jobdir = tempfile::tempdir().unwrap();
        let staged = stage(&picked, worktree.path(), &jobdir.path().join("stash")).unwrap();
        // The agent edits its copy: the service's skill stays as it was.
        std::fs::write(
            worktree.path().join(".agents/skills/review/SKILL.md"),
            "pwned",
        )
        .unwrap();
        assert_eq!(tree(service.path()), before);
        // Then replaces `.agents` and `.claude` with links to the service's folder.
        std::fs::remove_dir_all(worktree.path().join(".agents")).unwrap();
        std::fs::remove_dir_all(worktree.path().join(".claude")).unwrap();
        std::os::unix::fs::symlink(service.path(), worktree.path().join(".agents")).unwrap();
        std::os::unix::fs::symlink(service.path(), worktree.path().join(".claude")).unwrap();
        let e = staged.restore().unwrap_err();
        assert!(
            e.to_string()
                .contains("the agent replaced .agents with a symlink"),
            "{e}"
        );
        assert_eq!(
            tree(service.path()),
            before,
            "the service's skills are untouched"
        );
        assert!(
            !present(&worktree.path().join(".agents")).unwrap(),
            "the link is gone"
        );
    }

    #[test]
    fn a_stash_replaced_by_a_link_is_not_followed() {
        let (service, picked) = service_with_one_skill();
        let before = tree(service.path());
        let worktree = tempfile::tempdir().unwrap();
        write_skill(
            &worktree.path().join(".agents/skills"),
            "own",
            "name: own\ndescription: x\n",
        );
        let jobdir = tempfile::tempdir().unwrap();
        let stash = jobdir.path().join("stash");
        let staged = stage(&picked, worktree.path(), &stash).unwrap();
        std::fs::remove_dir_all(&stash).unwrap();
        std::os::unix::fs::symlink(service.path(), &stash).unwrap();
        let e = staged.restore().unwrap_err();
        assert!(
            e.to_string()
                .contains("the job's stash is no longer a folder"),
            "{e}"
        );
        assert_eq!(tree(service.path()), before);
    }

    #[test]
    fn a_pull_request_whose_agents_folder_is_a_link_is_refused() {
        let (service, picked) = service_with_one_skill();
        let before = tree(service.path());
        for linked in [".agents", ".agents/skills", ".claude"] {
            let worktree = tempfile::tempdir().unwrap();
            let link = worktree.path().join(linked);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            // `.agents -> <service>` makes `.agents/skills` the service's own skills folder.
            std::os::unix::fs::symlink(service.path(), &link).unwrap();
            let jobdir = tempfile::tempdir().unwrap();
            let e = stage(&picked, worktree.path(), &jobdir.path().join("stash")).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("the worktree's {linked} is a symlink")),
                "{e}"
            );
            assert_eq!(
                tree(service.path()),
                before,
                "nothing moved out of the service"
            );
            assert!(!present(&jobdir.path().join("stash")).unwrap());
        }
    }

    #[test]
    fn a_skill_file_linked_to_a_secret_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("app.pem");
        std::fs::write(&secret, "PRIVATE KEY").unwrap();
        let repo = dir.path().join("repo");
        let skills = repo.join(".agents/skills");
        write_skill(&skills, "style", "name: style\ndescription: Repo style.\n");
        std::os::unix::fs::symlink(&secret, skills.join("style/references/key.md")).unwrap();
        // A linked SKILL.md, and a linked skill folder, are not read either.
        std::fs::create_dir_all(skills.join("leak")).unwrap();
        std::os::unix::fs::symlink(&secret, skills.join("leak/SKILL.md")).unwrap();
        std::os::unix::fs::symlink(dir.path(), skills.join("linked")).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let (available, problems) = available(empty.path(), &repo);
        assert_eq!(available.keys().collect::<Vec<_>>(), ["style"]);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains("SKILL.md is a symlink")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("the skill's folder is a symlink")),
            "{text:?}"
        );
        let worktree = tempfile::tempdir().unwrap();
        let picked = select(&available, &["style".into()], false).unwrap();
        let staged = stage(&picked, worktree.path(), &dir.path().join("stash")).unwrap();
        assert!(
            worktree
                .path()
                .join(".agents/skills/style/references/more.md")
                .is_file()
        );
        assert!(
            !present(
                &worktree
                    .path()
                    .join(".agents/skills/style/references/key.md")
            )
            .unwrap()
        );
        assert_eq!(
            staged.notes[0],
            "skipped .agents/skills/style/references/key.md in a skill: a symlink (nightshift copies only regular files)"
        );
        staged.restore().unwrap();
    }
}
