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
    let text = std::fs::read_to_string(&file).map_err(|e| {
        vec![Diagnostic::new(
            &file,
            1,
            1,
            format!("cannot read the skill: {e}"),
        )]
    })?;
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

/// The skills directly under `root` (one folder each), and the problems of the invalid ones.
pub fn discover(root: &Path, source: &str) -> (Vec<Skill>, Vec<Diagnostic>) {
    let mut skills = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return (skills, problems);
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join("SKILL.md").is_file())
        .collect();
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
const STAGED: [&str; 2] = [".agents/skills", ".claude"];

/// A worktree whose skill folders hold exactly a job's skills; [`Staged::restore`] puts back what was there.
#[derive(Debug)]
pub struct Staged {
    worktree: PathBuf,
    /// (folder in the worktree, where its original waits).
    moved: Vec<(PathBuf, PathBuf)>,
    /// Whether `.agents` was created for the job.
    created_agents: bool,
}

/// Puts exactly `skills` where the agent CLIs look for them in the worktree (`.agents/skills/NAME` for
/// Codex, `.claude/skills/NAME` for Claude Code): the worktree's own skill folders are moved to `stash`
/// for the length of the job, so a pull request's skills or Claude settings are not the ones its job runs
/// with, and a job sees only the skills its trigger names.
pub fn stage(skills: &[Skill], worktree: &Path, stash: &Path) -> std::io::Result<Staged> {
    let mut staged = Staged {
        worktree: worktree.to_owned(),
        moved: Vec::new(),
        created_agents: !worktree.join(".agents").exists(),
    };
    for (i, folder) in STAGED.iter().enumerate() {
        let path = worktree.join(folder);
        if path.exists() {
            std::fs::create_dir_all(stash)?;
            let aside = stash.join(i.to_string());
            // Left by an attempt that died mid-job (its worktree is gone; this is stale).
            if aside.exists() {
                std::fs::remove_dir_all(&aside)?;
            }
            std::fs::rename(&path, &aside)?;
            staged.moved.push((path, aside));
        }
    }
    for skill in skills {
        for root in WORKTREE_ROOTS {
            copy_dir(&skill.dir, &worktree.join(root).join(&skill.name))?;
        }
    }
    Ok(staged)
}

impl Staged {
    /// Removes the job's skill folders and puts the worktree's own back, so they are not part of its changes.
    pub fn restore(self) -> std::io::Result<()> {
        for folder in STAGED {
            let path = self.worktree.join(folder);
            if path.exists() {
                std::fs::remove_dir_all(&path)?;
            }
        }
        if self.created_agents {
            let _ = std::fs::remove_dir(self.worktree.join(".agents"));
        }
        for (path, aside) in &self.moved {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(aside, path)?;
        }
        Ok(())
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
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
}
