//! The prompt an agent is given: the trigger's rendered prompt, and around it what the built-in backends
//! need to know: the repository's `AGENTS.md` files (from its default branch), the skills (for a model
//! endpoint, which cannot open files: an index and their bodies), and how the result is delivered.
//! A command agent gets the trigger's prompt unchanged: it is the user's own program.
//!
//! `nightshift prompt` shows exactly this text, so what an agent is told is never a guess.

use std::fmt::Write as _;
use std::path::Path;

use super::cut_at;
use crate::config::Backend;
use crate::skill::Skill;
use crate::trigger::OutputKind;

/// The most of one `AGENTS.md` file given to an agent (Codex's own default limit).
pub const AGENTS_MD_MAX: usize = 32 * 1024;
/// The most skill text a model endpoint gets in its prompt with `skills: auto`; past it, only the index.
pub const SKILL_BODIES_MAX: usize = 64 * 1024;

/// What the repository says about itself, read from its default branch.
#[derive(Clone, Debug, Default)]
pub struct RepoContext {
    /// Where it was read from, for the prompt and the job log (`main at 1a2b3c4`, or a folder).
    pub origin: String,
    /// Every `AGENTS.md` (path in the repository, text), the root one first.
    pub agents_md: Vec<(String, String)>,
    /// Why an `AGENTS.md` was not read (a symlink, not a regular file), for the job log.
    pub refused: Vec<String>,
}

impl RepoContext {
    /// Reads the `AGENTS.md` files at `paths` (relative to `root`), the root's first, the safe way: a symlink
    /// on the way, or a file that is not a regular one, is refused (and said in `refused`), and no more
    /// than [`AGENTS_MD_MAX`] (and a little, to say it was cut) is read of any.
    pub fn read(root: &Path, origin: String, mut paths: Vec<String>) -> RepoContext {
        paths.sort_by_key(|p| (p.matches('/').count(), p.clone()));
        let mut context = RepoContext {
            origin,
            ..RepoContext::default()
        };
        for p in paths {
            match crate::safe_fs::read_beneath(root, &p, AGENTS_MD_MAX + 4) {
                Ok(Some(file)) => {
                    let text = String::from_utf8_lossy(&file.bytes).into_owned();
                    context.agents_md.push((p, text));
                }
                Ok(None) => {}
                Err(e) => context.refused.push(e.to_string()),
            }
        }
        context
    }
}

impl RepoContext {
    /// What a local checkout says about itself (for `nightshift prompt`): its `AGENTS.md` files as git sees
    /// them (tracked or new, not ignored), or only the root one outside a git repository. git runs with
    /// nightshift's hardening on its command line, which outranks the checkout's own config: a checkout
    /// that came with its `.git` (an archive, a shared folder) cannot make it run a program (`core.fsmonitor`
    /// is read when the index is).
    pub fn from_checkout(dir: &Path) -> RepoContext {
        let mut git = std::process::Command::new("git");
        git.arg("-C").arg(dir);
        for setting in crate::repo::git::HARDENING {
            git.arg("-c").arg(setting);
        }
        let listed = git
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
                "--",
                ":(glob)**/AGENTS.md",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success());
        let paths = match listed {
            Some(out) => {
                let mut paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split('\0')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                paths.dedup();
                paths
            }
            None => vec!["AGENTS.md".to_owned()],
        };
        RepoContext::read(dir, format!("from the checkout {}", dir.display()), paths)
    }
}

/// The final prompt for `backend`.
pub fn compose(
    backend: &Backend,
    prompt: &str,
    output: OutputKind,
    repo: &RepoContext,
    skills: &[Skill],
    all_skills: bool,
) -> String {
    if matches!(backend, Backend::Command(_)) {
        return prompt.to_owned();
    }
    let mut out = String::new();
    if !repo.agents_md.is_empty() {
        let _ = writeln!(
            out,
            "# Repository instructions\n\nThe repository's AGENTS.md files ({}). Each one applies to the files \
             in its folder and below; a deeper one wins where they disagree.\n",
            repo.origin
        );
        for (path, text) in &repo.agents_md {
            let (text, cut) = cut_at(text, AGENTS_MD_MAX);
            let _ = writeln!(out, "## {path}\n\n{}\n", text.trim_end());
            if cut {
                let _ = writeln!(out, "(cut at {AGENTS_MD_MAX} bytes)\n");
            }
        }
    }
    if matches!(backend, Backend::OpenAi(_)) && !skills.is_empty() {
        skills_section(&mut out, skills, all_skills);
    }
    let _ = writeln!(out, "# Task\n\n{}\n", prompt.trim_end());
    let _ = write!(out, "# Delivery\n\n{}\n", delivery(backend, output));
    out
}

/// Skills for a model endpoint: an index, then the bodies (all the named ones; with `skills: auto`, as many
/// as fit in [`SKILL_BODIES_MAX`]).
fn skills_section(out: &mut String, skills: &[Skill], all_skills: bool) {
    let _ = writeln!(
        out,
        "# Skills\n\nConventions for this work. Follow the ones that apply to the task.\n"
    );
    for skill in skills {
        let _ = writeln!(out, "- **{}**: {}", skill.name, skill.description);
    }
    out.push('\n');
    let mut budget = if all_skills {
        SKILL_BODIES_MAX
    } else {
        usize::MAX
    };
    let mut left_out = Vec::new();
    for skill in skills {
        if skill.body.len() > budget {
            left_out.push(skill.name.as_str());
            continue;
        }
        budget -= skill.body.len();
        let _ = writeln!(
            out,
            "## Skill: {}\n\n{}\n",
            skill.name,
            skill.body.trim_end()
        );
    }
    if !left_out.is_empty() {
        let _ = writeln!(
            out,
            "(Not included, for length: {}.)\n",
            left_out.join(", ")
        );
    }
}

/// How the agent's work reaches GitHub, so a built-in agent knows what to leave behind.
fn delivery(backend: &Backend, output: OutputKind) -> &'static str {
    let edits = backend.edits_files();
    match output {
        OutputKind::Comment => {
            "Your final message is posted as a comment on GitHub, as you write it (Markdown)."
        }
        OutputKind::Issue => {
            "Your final message becomes the body of a new GitHub issue (Markdown)."
        }
        OutputKind::CheckRun => {
            "Your final message becomes the summary of a check run on the commit (Markdown)."
        }
        OutputKind::PullRequest if edits => {
            "Change the files in the working directory to do the task. Do not commit, push or create branches: \
             nightshift commits what you changed and opens the pull request. Your final message becomes the \
             pull request's description (Markdown)."
        }
        OutputKind::PullRequest => {
            "Your final message becomes the pull request's description (Markdown)."
        }
        OutputKind::Review if edits => {
            "Your review is posted on the pull request. For comments on specific lines, write the file \
             $NIGHTSHIFT_OUTPUT_DIR/review.json: {\"summary\": \"...\", \"comments\": [{\"path\": \"src/x.rs\", \
             \"line\": 12, \"side\": \"RIGHT\", \"body\": \"...\"}]} (line numbers of the pull request's new \
             version; LEFT for the old one). Without that file, your final message is the review. Do not change \
             the repository's files."
        }
        OutputKind::Review => {
            "Your final message is posted as a review of the pull request (Markdown)."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CliOptions, EndpointOptions};
    use std::path::PathBuf;

    /// `nightshift prompt` on a checkout that came with its own `.git` (an archive, a shared folder): its
    /// config names a program for `core.fsmonitor`, which plain `git ls-files` runs when it reads the index.
    #[test]
    fn a_checkouts_own_git_config_runs_nothing_when_its_agents_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("checkout");
        let marker = dir.path().join("ran");
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let git = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        std::fs::write(repo.join("AGENTS.md"), "root rules").unwrap();
        std::fs::write(repo.join("sub/AGENTS.md"), "sub rules").unwrap();
        git(&["init", "-q"]);
        git(&["add", "AGENTS.md"]);
        git(&["config", "core.fsmonitor", hook.to_str().unwrap()]);
        let context = RepoContext::from_checkout(&repo);
        assert!(!marker.exists(), "the checkout's fsmonitor ran");
        let files: Vec<&str> = context.agents_md.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(files, ["AGENTS.md", "sub/AGENTS.md"]);
        // The same listing without the hardening runs it (so the check above can fail).
        git(&["ls-files", "--cached"]);
        assert!(marker.exists());
    }

    fn skill(name: &str, body: &str) -> Skill {
        Skill {
            name: name.into(),
            description: format!("{name} description"),
            dir: PathBuf::from("/nowhere"),
            source: "service".into(),
            body: body.into(),
        }
    }

    fn endpoint() -> Backend {
        Backend::OpenAi(EndpointOptions {
            model: "m".into(),
            base_url: "http://x".into(),
            api_key_env: None,
            system: None,
            temperature: None,
        })
    }

    fn codex() -> Backend {
        Backend::Codex(CliOptions {
            program: "codex".into(),
            model: None,
            base_url: None,
            api_key_env: "K".into(),
            permission_mode: String::new(),
            bearer: false,
            allowed_tools: vec![],
            args: vec![],
        })
    }

    fn repo() -> RepoContext {
        RepoContext {
            origin: "from `main` at abc1234".into(),
            agents_md: vec![
                ("AGENTS.md".into(), "Run cargo test.\n".into()),
                ("web/AGENTS.md".into(), "Use pnpm.\n".into()),
            ],
            refused: vec![],
        }
    }

    #[test]
    fn linked_agents_md_files_are_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("web")).unwrap();
        std::fs::write(root.join("web/AGENTS.md"), "Use pnpm.\n").unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", root.join("AGENTS.md")).unwrap();
        std::os::unix::fs::symlink(root.join("web"), root.join("docs")).unwrap();
        let context = RepoContext::read(
            root,
            "here".into(),
            vec![
                "AGENTS.md".into(),
                "web/AGENTS.md".into(),
                "docs/AGENTS.md".into(),
            ],
        );
        assert_eq!(
            context.agents_md,
            [("web/AGENTS.md".into(), "Use pnpm.\n".into())]
        );
        assert_eq!(
            context.refused,
            [
                "AGENTS.md is a symlink; nightshift reads only regular files",
                "docs is a symlink; nightshift reads only regular files"
            ]
        );
    }

    #[test]
    fn a_command_agent_gets_the_prompt_unchanged() {
        let backend = Backend::Command(vec!["x".into()]);
        let out = compose(
            &backend,
            "do it",
            OutputKind::Comment,
            &repo(),
            &[skill("a", "A")],
            false,
        );
        assert_eq!(out, "do it");
    }

    #[test]
    fn cli_agents_get_the_repository_instructions_and_the_delivery_but_find_skills_themselves() {
        let out = compose(
            &codex(),
            "Fix the bug.",
            OutputKind::PullRequest,
            &repo(),
            &[skill("a", "SKILL BODY")],
            false,
        );
        insta::assert_snapshot!(out);
    }

    #[test]
    fn a_model_endpoint_gets_a_skill_index_and_bodies() {
        let out = compose(
            &endpoint(),
            "Review this.",
            OutputKind::Comment,
            &RepoContext::default(),
            &[skill("one", "Body one."), skill("two", "Body two.")],
            false,
        );
        insta::assert_snapshot!(out);
    }

    #[test]
    fn with_skills_auto_bodies_stop_at_the_budget_and_the_index_names_them_all() {
        let big = "x".repeat(SKILL_BODIES_MAX - 4);
        let out = compose(
            &endpoint(),
            "t",
            OutputKind::Comment,
            &RepoContext::default(),
            &[skill("big", &big), skill("small", "too late")],
            true,
        );
        assert!(out.contains("- **small**: small description"));
        assert!(!out.contains("too late"));
        assert!(out.contains("(Not included, for length: small.)"));
        // Named skills are always given whole.
        let out = compose(
            &endpoint(),
            "t",
            OutputKind::Comment,
            &RepoContext::default(),
            &[skill("big", &big), skill("small", "too late")],
            false,
        );
        assert!(out.contains("too late"));
    }

    #[test]
    fn a_long_agents_md_is_cut_at_a_character_boundary() {
        let mut repo = repo();
        repo.agents_md = vec![("AGENTS.md".into(), "é".repeat(AGENTS_MD_MAX))];
        let out = compose(&codex(), "t", OutputKind::Comment, &repo, &[], false);
        assert!(out.contains(&format!("(cut at {AGENTS_MD_MAX} bytes)")));
    }
}
