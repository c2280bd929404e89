//! Triggers a repository keeps itself, in `.nightshift/triggers/*.yml` on its default branch. They are read
//! from the default branch only (never from a pull request's head, so a pull request cannot change what
//! runs on it), cached per repository, and read again when a push reaches the default branch. They apply to
//! their own repository only, use the service's agent profiles, and are named `REPO.FILE` (e.g.
//! `Hello-World.review`) so they never collide with the service's triggers. Their concurrency groups are
//! prefixed with the repository (`owner/name:group`), so one repository cannot cancel another's jobs.
//!
//! A repository's triggers are written by whoever can push to its default branch: they are checked (which
//! renders their templates against sample payloads) off the async threads, within [`LOAD_TIMEOUT`], and
//! every template runs on a fuel budget.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::TriggerSet;
use super::load::{AgentKinds, load_repository_file};
use super::pattern::{Pattern, PatternList};
use crate::ids::RepoName;
use crate::repo::git::GitAuth;
use crate::repo::workspace::Workspaces;
use crate::source::event::Event;
use crate::yaml::Diagnostic;

/// Where a repository keeps its triggers.
pub const DIR: &str = ".nightshift/triggers";

/// The longest checking a repository's trigger files may take before they are refused.
pub const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Default)]
pub struct RepoTriggers {
    cache: Mutex<HashMap<RepoName, Arc<TriggerSet>>>,
    /// What the last read of each repository found (the dashboard's triggers page shows it).
    loads: std::sync::Mutex<HashMap<RepoName, Arc<RepoLoad>>>,
    /// Repositories whose last read failed: their next event reads again, whatever is cached.
    stale: std::sync::Mutex<std::collections::HashSet<RepoName>>,
}

/// The last read of one repository's own triggers.
pub struct RepoLoad {
    pub repo: RepoName,
    /// When it was read (ms since the epoch).
    pub at_ms: i64,
    /// The default branch's commit the files were read at (none: reading failed before that).
    pub commit: Option<String>,
    /// The triggers in force for it now: what this read found, or, when it failed, the last good read's.
    pub triggers: Arc<TriggerSet>,
    /// The problems in its trigger files (file:line:col).
    pub problems: Vec<Diagnostic>,
    /// Why the read failed, if it did.
    pub error: Option<String>,
}

impl RepoTriggers {
    /// The repository's own triggers for `event` as last read, unless the event is a push to the default
    /// branch (which may have changed them) or they were never read.
    pub async fn cached(&self, event: &Event) -> Option<Arc<TriggerSet>> {
        let repo = event.repository.as_ref()?;
        let default_ref = format!("refs/heads/{}", repo.default_branch);
        if event
            .push
            .as_ref()
            .is_some_and(|p| p.git_ref == default_ref)
        {
            return None;
        }
        if self
            .stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&repo.full_name)
        {
            return None;
        }
        self.cache.lock().await.get(&repo.full_name).cloned()
    }

    /// Reads the repository's own triggers from its default branch, and caches them.
    pub async fn read(
        &self,
        event: &Event,
        workspaces: &Workspaces,
        auth: &GitAuth,
        agents: &AgentKinds,
    ) -> Result<Arc<TriggerSet>> {
        let Some(repo) = &event.repository else {
            return Ok(Arc::new(TriggerSet::new(Vec::new())));
        };
        let mut commit = None;
        let read = self
            .read_uncached(event, workspaces, auth, agents, &mut commit)
            .await;
        {
            let mut stale = self.stale.lock().unwrap_or_else(|e| e.into_inner());
            match &read {
                Ok(_) => stale.remove(&repo.full_name),
                Err(_) => stale.insert(repo.full_name.clone()),
            };
        }
        let (triggers, problems, error) = match &read {
            Ok((set, problems)) => (set.clone(), problems.clone(), None),
            Err(e) => (
                self.cache
                    .lock()
                    .await
                    .get(&repo.full_name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(TriggerSet::new(Vec::new()))),
                Vec::new(),
                Some(format!("{e:#}")),
            ),
        };
        self.loads.lock().unwrap_or_else(|e| e.into_inner()).insert(
            repo.full_name.clone(),
            Arc::new(RepoLoad {
                repo: repo.full_name.clone(),
                at_ms: crate::now_ms(),
                commit,
                triggers,
                problems,
                error,
            }),
        );
        read.map(|(set, _)| set)
    }

    /// The last read of every repository, by name.
    pub fn loads(&self) -> Vec<Arc<RepoLoad>> {
        let mut loads: Vec<Arc<RepoLoad>> = self
            .loads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        loads.sort_by_key(|l| l.repo.to_string());
        loads
    }

    /// [`read`](Self::read), with the problems found, and the commit read at in `commit`.
    async fn read_uncached(
        &self,
        event: &Event,
        workspaces: &Workspaces,
        auth: &GitAuth,
        agents: &AgentKinds,
        commit: &mut Option<String>,
    ) -> Result<(Arc<TriggerSet>, Vec<Diagnostic>)> {
        let Some(repo) = &event.repository else {
            return Ok((Arc::new(TriggerSet::new(Vec::new())), Vec::new()));
        };
        let files = workspaces
            .read_files(
                &repo.full_name,
                &repo.clone_url,
                &repo.default_branch,
                DIR,
                &[".yml", ".yaml"],
                auth,
            )
            .await?;
        *commit = Some(files.commit.clone());
        let (name, texts, kinds) = (repo.full_name.clone(), files.files, agents.clone());
        let checking = tokio::task::spawn_blocking(move || parse(&name, &texts, &kinds));
        let (set, problems) = match tokio::time::timeout(LOAD_TIMEOUT, checking).await {
            Ok(Ok(Ok(parsed))) => parsed,
            // Not the files' fault: no verdict on them; this event goes without them, the next reads again.
            Ok(Ok(Err(why))) => anyhow::bail!("checking the repository's triggers failed: {why}"),
            Ok(Err(e)) => anyhow::bail!("checking the repository's triggers failed: {e}"),
            Err(_) => anyhow::bail!(
                "checking the repository's triggers took longer than {}s; they are not used",
                LOAD_TIMEOUT.as_secs()
            ),
        };
        for d in &problems {
            warn!(repo = %repo.full_name, commit = %files.commit, "{d}");
        }
        for warning in set.triggers().iter().flat_map(|t| &t.warnings) {
            warn!(repo = %repo.full_name, commit = %files.commit, "{warning}");
        }
        info!(repo = %repo.full_name, commit = %files.commit, triggers = set.triggers().len(), "repository triggers read");
        let set = Arc::new(set);
        self.cache
            .lock()
            .await
            .insert(repo.full_name.clone(), set.clone());
        Ok((set, problems))
    }
}

/// Checks a repository's trigger files: each must be valid, may not schedule (schedules belong to the
/// service, which knows the repositories) and may not name other repositories. An error when the files
/// could not be checked at all (no template renderer could be had): that says nothing of them.
pub fn parse(
    repo: &RepoName,
    files: &[(String, String)],
    agents: &AgentKinds,
) -> Result<(TriggerSet, Vec<Diagnostic>), String> {
    let mut triggers = Vec::new();
    let mut problems = Vec::new();
    let display_path = |path: &str| Path::new(&repo.to_string()).join(path);
    // Every file's check against the samples on one CPU budget (in the service).
    let mut checks = super::isolate::Checks::new();
    for (path, text) in files {
        let shown = display_path(path);
        match load_repository_file(&shown, text, Some(agents), checks.as_mut()) {
            Err(mut ds) => problems.append(&mut ds),
            Ok(mut trigger) => {
                if let Some(why) = agents.not_for_repos.get(&trigger.agent) {
                    let unboxed = why.contains("sandbox: none");
                    problems.push(
                        Diagnostic::new(
                            &shown,
                            1,
                            1,
                            format!(
                                "a repository's own trigger cannot use agent `{}`: {}",
                                trigger.agent,
                                if why.is_empty() { "its profile says repo_triggers: false" } else { why }
                            ),
                        )
                        .with_hint(if unboxed {
                            "whoever can push this repository's default branch wrote this trigger: use a boxed \
                             profile, or put the trigger in the service's triggers folder"
                        } else {
                            "whoever can push this repository's default branch wrote this trigger: use a profile \
                             that holds nothing more, put the trigger in the service's triggers folder, or, if \
                             every installed repository's pushers may have what the profile holds, set \
                             repo_triggers: true on it"
                        }),
                    );
                    continue;
                }
                if !trigger.schedules.is_empty() {
                    problems.push(
                        Diagnostic::new(
                            &shown,
                            1,
                            1,
                            "a repository's own triggers cannot have schedules",
                        )
                        .with_hint(
                            "put scheduled triggers in the service's triggers folder, with `repos`",
                        ),
                    );
                    continue;
                }
                if trigger.repos.is_some() {
                    problems.push(
                        Diagnostic::new(&shown, 1, 1, "a repository's own triggers apply to it alone; remove `repos`")
                            .with_hint("triggers for several repositories belong in the service's triggers folder"),
                    );
                    continue;
                }
                let own = Pattern::parse(&literal_pattern(&repo.to_string().to_lowercase()))
                    .and_then(|p| PatternList::new(vec![p]));
                trigger.repos = own.ok();
                trigger.name = format!("{}.{}", repo.name(), trigger.name);
                if let Some(c) = &mut trigger.concurrency {
                    // A repository name has no template syntax in it, so the prefix renders as itself.
                    c.group = format!("{repo}:{}", c.group);
                }
                triggers.push(trigger);
            }
        }
    }
    match checks.as_ref().and_then(|c| c.unavailable()) {
        Some(why) => Err(why.to_owned()),
        None => Ok((TriggerSet::new(triggers).isolated(), problems)),
    }
}

/// A repository name as a literal pattern.
fn literal_pattern(name: &str) -> String {
    name.chars()
        .flat_map(|c| match c {
            '*' | '?' | '+' | '[' | ']' | '!' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_triggers_are_named_by_their_repository_and_bound_to_it() {
        let repo = RepoName::parse("acme/api").unwrap();
        let agents: AgentKinds = [("a".to_owned(), "command")].into();
        let files = vec![
            (".nightshift/triggers/review.yml".to_owned(), "on: pull_request\nagent: a\nprompt: x\n".to_owned()),
            (".nightshift/triggers/nightly.yml".to_owned(), "on:\n  schedule:\n    - cron: '0 3 * * *'\nrepos: [acme/api]\nagent: a\nprompt: x\noutput: issue\n".to_owned()),
            (".nightshift/triggers/other.yml".to_owned(), "on: issues\nrepos: [acme/web]\nagent: a\nprompt: x\n".to_owned()),
            (".nightshift/triggers/bad.yml".to_owned(), "on: issues\nagent: zzz\nprompt: x\n".to_owned()),
        ];
        let (set, problems) = parse(&repo, &files, &agents).unwrap();
        assert_eq!(set.triggers().len(), 1);
        assert_eq!(set.triggers()[0].name, "api.review");
        assert_eq!(
            set.triggers()[0].repos.as_ref().unwrap().literals(),
            Some(vec!["acme/api".to_owned()])
        );
        let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(messages[0].starts_with("acme/api/.nightshift/triggers/nightly.yml:1:1: error: a repository's own triggers cannot have schedules"));
        assert!(messages[1].contains("apply to it alone"));
        assert!(
            messages[2]
                .starts_with("acme/api/.nightshift/triggers/bad.yml:2:8: error: agent `zzz`")
        );
    }

    #[test]
    fn a_repository_trigger_keeps_its_verify_steps_from_the_files_it_is_given() {
        // `RepoTriggers::read` gives `parse` the default branch's files only; what a pull request's head says
        // about `verify:` never reaches here (tests/reload.rs shows a head's trigger file never runs).
        let repo = RepoName::parse("acme/api").unwrap();
        let agents: AgentKinds = [("a".to_owned(), "command")].into();
        let files = vec![(
            ".nightshift/triggers/fix.yml".to_owned(),
            "on: issues\nagent: a\nprompt: x\noutput: pull_request\nverify:\n  - {name: tests, run: make test}\nverify_rounds: 1\nverify_fail: draft\n".to_owned(),
        )];
        let (set, problems) = parse(&repo, &files, &agents).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let t = &set.triggers()[0];
        assert_eq!(
            t.verify.as_ref().unwrap()[0].argv,
            ["sh", "-c", "make test"]
        );
        assert_eq!(
            (t.verify_rounds, t.verify_fail),
            (Some(1), crate::trigger::VerifyFail::Draft)
        );
    }

    /// Whoever can push a repository's default branch writes its triggers, in any installed repository. A
    /// profile without a box (`sandbox: none`) would run their prompt (and verify steps) on the service's
    /// machine, as the service's user; one with `env:` hands them the service's secrets meant for other
    /// triggers. Neither is theirs to use, unless the profile says so (never for an unboxed one).
    #[test]
    fn a_repository_trigger_cannot_use_a_profile_that_holds_more_than_a_job_needs() {
        let repo = RepoName::parse("acme/api").unwrap();
        let mut agents: AgentKinds = [
            ("boxed".to_owned(), "command"),
            ("bare".to_owned(), "claude"),
            ("release".to_owned(), "codex"),
        ]
        .into();
        agents.not_for_repos.insert(
            "bare".to_owned(),
            "it runs outside a box (sandbox: none)".to_owned(),
        );
        agents.not_for_repos.insert(
            "release".to_owned(),
            "it is given the service's environment variables (env:)".to_owned(),
        );
        let file = |agent: &str| {
            (
                format!(".nightshift/triggers/{agent}.yml"),
                format!(
                    "on: issues\nagent: {agent}\nprompt: x\nverify:\n  - {{name: t, run: 'cat /etc/shadow'}}\n"
                ),
            )
        };
        let (set, problems) = parse(
            &repo,
            &[file("boxed"), file("bare"), file("release")],
            &agents,
        )
        .unwrap();
        assert_eq!(set.triggers().len(), 1);
        assert_eq!(set.triggers()[0].agent, "boxed");
        assert_eq!(problems.len(), 2, "{problems:?}");
        let all = problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains("cannot use agent `bare`: it runs outside a box (sandbox: none)")
                && all.contains(
                    "cannot use agent `release`: it is given the service's environment variables"
                ),
            "{all}"
        );
    }

    /// A repository's trigger whose prompt nests lists of references: reading it printed gigabytes and the
    /// service ran out of memory; now it is a problem with its file and line, and nothing renders it.
    #[test]
    fn a_repository_trigger_whose_template_builds_nested_lists_is_refused_when_read() {
        let repo = RepoName::parse("acme/api").unwrap();
        let agents: AgentKinds = [("a".to_owned(), "command")].into();
        let mut prompt =
            String::from("{% set s = \"xxxxxxxxxx\" %}{% set a = [s,s,s,s,s,s,s,s,s,s] %}");
        for (from, to) in ["abcdefg".chars().zip("bcdefgh".chars())]
            .into_iter()
            .flatten()
        {
            prompt.push_str(&format!("{{% set {to} = [{from},{from},{from},{from},{from},{from},{from},{from},{from},{from}] %}}"));
        }
        prompt.push_str("{{ h }}");
        let files = vec![(
            ".nightshift/triggers/bomb.yml".to_owned(),
            format!("on: issues\nagent: a\nprompt: '{prompt}'\n"),
        )];
        let (set, problems) = parse(&repo, &files, &agents).unwrap();
        assert!(set.triggers().is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        let problem = problems[0].to_string();
        assert!(
            problem.starts_with("acme/api/.nightshift/triggers/bomb.yml:3:")
                && problem.contains("may not build values"),
            "{problem}"
        );
    }
}
