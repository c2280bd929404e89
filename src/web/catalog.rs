//! `/triggers`: the triggers in force (name, file, what they listen to, agent, output, the repositories
//! they apply to, the skills they use) with the problems the last reload found in the trigger files
//! (file, line, column, hint: what `nightshift check` prints), and the service's skills with theirs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::fragment::{data, given, render, utc, with_query};
use crate::config::Config;
use crate::skill::Skill;
use crate::store::Store;
use crate::trigger::repo::RepoLoad;
use crate::trigger::{Filter, Live, Skills, Trigger};
use crate::yaml::Diagnostic;

/// Repositories listed under a trigger (the rest are counted).
pub const REPOS_SHOWN: usize = 20;

/// `/triggers?repo=o/r`: only the triggers that apply to a repository.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TriggersQuery {
    pub repo: Option<String>,
}

#[derive(Serialize)]
struct Problem {
    file: String,
    line: u64,
    column: u64,
    message: String,
    hint: Option<String>,
}

impl From<&Diagnostic> for Problem {
    fn from(d: &Diagnostic) -> Self {
        Problem {
            file: d.path.display().to_string(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
            hint: d.hint.clone(),
        }
    }
}

#[derive(Serialize)]
struct SkillView {
    name: String,
    description: String,
    source: String,
    dir: String,
    /// The triggers that use it (named, or every skill with `skills: auto`).
    used_by: Vec<String>,
}

#[derive(Serialize)]
struct TriggerSkill {
    name: String,
    /// From the service's skills; `None`: not among them (a repository's own may provide it).
    description: Option<String>,
    source: Option<String>,
}

#[derive(Serialize)]
struct TriggerView {
    name: String,
    file: String,
    /// The file has problems now: what runs is its last good version.
    stale: bool,
    description: Option<String>,
    events: Vec<String>,
    condition: Option<String>,
    from: String,
    agent: String,
    output: String,
    /// `None`: every repository.
    repo_patterns: Option<Vec<String>>,
    repos: Vec<String>,
    repos_more: usize,
    skills_auto: bool,
    skills: Vec<TriggerSkill>,
    warnings: Vec<String>,
}

/// `issues: types [opened, labeled]; labels [bug]`.
fn event_summary(kind: &str, f: &Filter) -> String {
    let mut parts = Vec::new();
    let list = |name: &str, items: Vec<&str>| format!("{name} [{}]", items.join(", "));
    if !f.types.is_empty() {
        parts.push(list("types", f.types.iter().map(String::as_str).collect()));
    }
    for (name, patterns) in [
        ("branches", &f.branches),
        ("branches-ignore", &f.branches_ignore),
        ("tags", &f.tags),
        ("tags-ignore", &f.tags_ignore),
        ("paths", &f.paths),
        ("paths-ignore", &f.paths_ignore),
    ] {
        if let Some(p) = patterns {
            parts.push(list(name, p.sources()));
        }
    }
    for (name, names) in [
        ("labels", &f.labels),
        ("conclusions", &f.conclusions),
        ("workflows", &f.workflows),
    ] {
        if let Some(n) = names {
            parts.push(list(name, n.iter().map(String::as_str).collect()));
        }
    }
    if let Some(command) = &f.command {
        parts.push(format!("command {command}"));
    }
    if parts.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", parts.join("; "))
    }
}

fn trigger_view(
    t: &Trigger,
    broken: &[PathBuf],
    repos: &[String],
    skills: &BTreeMap<String, Skill>,
) -> TriggerView {
    let mut events: Vec<String> = t
        .events
        .iter()
        .map(|(kind, filter)| event_summary(kind.name(), filter))
        .collect();
    events.sort();
    for s in &t.schedules {
        events.push(format!("schedule: {} ({})", s.cron, s.timezone));
    }
    let applies: Vec<&String> = repos
        .iter()
        .filter(|r| {
            t.repos
                .as_ref()
                .is_none_or(|p| p.matches(&r.to_lowercase()))
        })
        .collect();
    let (skills_auto, named) = match &t.skills {
        None => (false, Vec::new()),
        Some(Skills::Auto) => (true, skills.keys().cloned().collect()),
        Some(Skills::Named(names)) => (false, names.clone()),
    };
    TriggerView {
        name: t.name.clone(),
        file: t.path.display().to_string(),
        stale: broken.contains(&t.path),
        description: t.description.clone(),
        events,
        condition: t.condition.clone(),
        from: match &t.from {
            None => "anyone".into(),
            Some(list) => list.join(", "),
        },
        agent: t.agent.clone(),
        output: t.output.kind.name().to_owned(),
        repo_patterns: t
            .repos
            .as_ref()
            .map(|p| p.sources().into_iter().map(str::to_owned).collect()),
        repos_more: applies.len().saturating_sub(REPOS_SHOWN),
        repos: applies.into_iter().take(REPOS_SHOWN).cloned().collect(),
        skills_auto,
        skills: named
            .into_iter()
            .map(|name| {
                let found = skills.get(&name);
                TriggerSkill {
                    description: found.map(|s| s.description.clone()),
                    source: found.map(|s| s.source.clone()),
                    name,
                }
            })
            .collect(),
        warnings: t.warnings.clone(),
    }
}

/// One block of the page: the service's triggers, or one repository's own as last read.
#[derive(Serialize)]
struct Group {
    /// `None`: the service's.
    repo: Option<String>,
    at: Option<String>,
    commit: Option<String>,
    error: Option<String>,
    problems: Vec<Problem>,
    triggers: Vec<TriggerView>,
}

/// Every repository nightshift knows (installed, or seen in a delivery), by name without case, sorted.
async fn known_repos(store: &dyn Store) -> Result<Vec<String>> {
    let mut repos: BTreeMap<String, String> = BTreeMap::new();
    for r in store.installed_repos().await? {
        repos
            .entry(r.full_name.to_lowercase())
            .or_insert(r.full_name);
    }
    for r in store.repositories().await? {
        repos
            .entry(r.full_name.to_lowercase())
            .or_insert(r.full_name);
    }
    Ok(repos.into_values().collect())
}

/// `/triggers`: the triggers `live` has in force and the problems its last reload found, each repository's
/// own triggers as last read from its default branch (`repo_loads`, with that read's problems or failure),
/// the service's skills (read from `config.skills` now) and theirs; the repositories each trigger applies to
/// among those the store knows.
pub async fn triggers(
    store: &dyn Store,
    live: &Live,
    repo_loads: &[Arc<RepoLoad>],
    config: &Config,
    query: &TriggersQuery,
) -> Result<String> {
    let set = live.get();
    let problems = live.problems();
    let root = config.skills.clone();
    let (skills, skill_problems) =
        tokio::task::spawn_blocking(move || crate::skill::discover(&root, "service")).await?;
    let skills: BTreeMap<String, Skill> = skills.into_iter().map(|s| (s.name.clone(), s)).collect();
    let repos = known_repos(store).await?;
    let only = given(&query.repo).map(|r| r.to_lowercase());
    let broken: Vec<PathBuf> = problems.iter().map(|d| d.path.clone()).collect();
    let mut triggers: Vec<TriggerView> = set
        .triggers()
        .iter()
        .filter(|t| {
            only.as_ref()
                .is_none_or(|r| t.repos.as_ref().is_none_or(|p| p.matches(r)))
        })
        .map(|t| trigger_view(t, &broken, &repos, &skills))
        .collect();
    triggers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups = vec![Group {
        repo: None,
        at: None,
        commit: None,
        error: None,
        problems: problems.iter().map(Problem::from).collect(),
        triggers,
    }];
    for load in repo_loads {
        let name = load.repo.to_string();
        if only.as_ref().is_some_and(|r| *r != name.to_lowercase()) {
            continue;
        }
        let mut triggers: Vec<TriggerView> = load
            .triggers
            .triggers()
            .iter()
            .map(|t| trigger_view(t, &[], std::slice::from_ref(&name), &skills))
            .collect();
        triggers.sort_by(|a, b| a.name.cmp(&b.name));
        groups.push(Group {
            repo: Some(name),
            at: Some(utc(load.at_ms).0 + " UTC"),
            commit: load.commit.clone(),
            error: load.error.clone(),
            problems: load.problems.iter().map(Problem::from).collect(),
            triggers,
        });
    }
    let skill_views: Vec<SkillView> = skills
        .values()
        .map(|s| SkillView {
            name: s.name.clone(),
            description: s.description.clone(),
            source: s.source.clone(),
            dir: s.dir.display().to_string(),
            used_by: groups
                .iter()
                .flat_map(|g| &g.triggers)
                .filter(|t| t.skills.iter().any(|k| k.name == s.name))
                .map(|t| t.name.clone())
                .collect(),
        })
        .collect();
    render(
        "triggers",
        minijinja::context! {
            groups => data(&groups),
            repo_dir => crate::trigger::repo::DIR,
            skills => data(&skill_views),
            skill_problems => data(skill_problems.iter().map(Problem::from).collect::<Vec<_>>()),
            repo => query.repo.as_deref().unwrap_or_default(),
            all_href => only.as_ref().map(|_| with_query("/triggers", &[])),
        },
    )
}

// Classes: `triggers` (the section), `filters`, `problems` with `problem`, `where`, `message`, `hint`;
// `trigger` (one `<article>` each, with `stale` when its file has problems), `fields`, `events`,
// `repos`, `skills`, `missing`, `warnings`; `skills-loaded` with `skill`; `empty`.
// The template: templates/triggers.html (compiled once, in `fragment`).

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ConfigSource;
    use crate::store::Installation;
    use crate::trigger::TriggerSet;
    use crate::trigger::load::load;
    use crate::trigger::reload::reload;
    use crate::web::fragment::tests::{HOSTILE, assert_inert};

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn config(dir: &Path) -> Config {
        let path = dir.join("nightshift.yml");
        write(&path, "agents:\n  a:\n    command: [cat]\n");
        Config::load(&ConfigSource {
            path: &path,
            required: true,
            env: &|_| None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn triggers_show_what_they_listen_to_and_a_broken_file_its_problems_with_hints() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let [markup, breakout, ansi, _] = HOSTILE;
        let triggers = &config.triggers;
        write(
            &triggers.join("triage.yml"),
            &format!(
                "description: {}\non:\n  issues:\n    types: [opened, labeled]\n    labels: [{}]\n\
                 repos: [o/*]\nagent: a\nskills: [style, elsewhere]\nprompt: hi\n",
                serde_json::to_string(markup).unwrap(),
                serde_json::to_string(breakout).unwrap(),
            ),
        );
        write(
            &triggers.join("nightly.yml"),
            "on: issues\nagent: a\nprompt: first\n",
        );
        write(
            &config.skills.join("style/SKILL.md"),
            &format!(
                "---\nname: style\ndescription: {}\n---\nWrite well.\n",
                serde_json::to_string(&format!("{markup} {ansi}")).unwrap()
            ),
        );
        write(
            &config.skills.join("Bad/SKILL.md"),
            "---\nname: bad\n---\nno description\n",
        );
        let agents = config.agent_kinds();
        let loaded = load(std::slice::from_ref(triggers), Some(&agents));
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let live = Live::new(TriggerSet::new(loaded.triggers));
        // nightly.yml breaks while the service runs: a typo on line 3.
        write(
            &triggers.join("nightly.yml"),
            "on: issues\nagent: a\npromt: second\n",
        );
        let (set, problems) = reload(&live.get(), std::slice::from_ref(triggers), &agents);
        assert_eq!(problems.len(), 1, "{problems:?}");
        live.set_reloaded(set, problems);

        let dir_path = dir.path().to_path_buf();
        let url = format!("sqlite://{}/n.db", dir_path.display());
        let store = crate::store::open(&url).await.unwrap();
        store
            .upsert_installation(&Installation {
                id: 1,
                account: "o".into(),
                suspended: false,
            })
            .await
            .unwrap();
        let hostile_repo = format!("o/{breakout}");
        store
            .add_installed_repos(1, &["o/api".into(), hostile_repo, "elsewhere/x".into()])
            .await
            .unwrap();

        let page = triggers_page(&*store, &live, &config, &TriggersQuery::default()).await;
        assert_inert(&page);
        // The problem, where it is and what to do, as `nightshift check` says it.
        let nightly = triggers.join("nightly.yml").display().to_string();
        let at = format!(
            "<code class=\"where\">{}:3:1</code>",
            super::super::fragment::escape(&nightly)
        );
        assert!(page.contains(&at), "{at} in:\n{page}");
        assert!(page.contains("unknown field `promt`"), "{page}");
        assert!(page.contains("<span class=\"hint\">hint: "), "{page}");
        assert!(page.contains("`prompt`"));
        // Its last good version is in force, and says so.
        assert!(page.contains("<article class=\"trigger stale\">\n<h2>nightly</h2>"));
        // The good trigger: events, filters, repositories it applies to, its skills.
        assert!(page.contains("<article class=\"trigger\">\n<h2>triage</h2>"));
        assert!(page.contains(
            "<li>issues: types [opened, labeled]; labels [&quot;&#39;&gt;&lt;img src=x onerror=alert(1)&gt;]</li>"
        ), "{page}");
        let triage = article(&page, "triage");
        assert!(triage.contains("<code>o/*</code>"), "{triage}");
        assert!(triage.contains("<li>o/api</li>") && !triage.contains("<li>elsewhere/x</li>"));
        assert!(triage.contains("<li>o/&quot;&#39;&gt;&lt;img"));
        assert!(triage.contains("<li>style (service): &lt;script&gt;"));
        assert!(triage.contains("<li>elsewhere <span class=\"missing\">"));
        assert!(article(&page, "nightly").contains("every repository"));
        assert!(page.contains("\\u{1b}[2J"));
        // The skill that does not load, with where.
        let bad = config.skills.join("Bad/SKILL.md").display().to_string();
        assert!(
            page.contains(&super::super::fragment::escape(&bad)),
            "{page}"
        );

        let only = TriggersQuery {
            repo: Some("elsewhere/x".into()),
        };
        let page = triggers_page(&*store, &live, &config, &only).await;
        assert!(page.contains("<h2>nightly</h2>") && !page.contains("<h2>triage</h2>"));
    }

    #[tokio::test]
    async fn a_repositorys_own_triggers_show_escaped_with_their_problems_or_why_reading_failed() {
        use crate::ids::RepoName;
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let agents = config.agent_kinds();
        let repo = RepoName::parse("acme/api").unwrap();
        let files = vec![
            (
                ".nightshift/triggers/review.yml".to_owned(),
                "description: \"<script>alert(2)</script>\"\non: pull_request\nagent: a\nprompt: x\n"
                    .to_owned(),
            ),
            (
                ".nightshift/triggers/bad.yml".to_owned(),
                "on: issues\nagent: zzz\nprompt: x\n".to_owned(),
            ),
        ];
        let (set, problems) = crate::trigger::repo::parse(&repo, &files, &agents).unwrap();
        // A name no file could give (the loader refuses it): the page escapes whatever it is given.
        let mut own = set.triggers().to_vec();
        own[0].name = "<script>alert(1)</script>".into();
        let good = Arc::new(RepoLoad {
            repo: repo.clone(),
            at_ms: 0,
            commit: Some("0123abc".into()),
            triggers: Arc::new(TriggerSet::new(own)),
            problems,
            error: None,
        });
        let failed = Arc::new(RepoLoad {
            repo: RepoName::parse("acme/web").unwrap(),
            at_ms: 0,
            commit: None,
            triggers: Arc::new(TriggerSet::new(Vec::new())),
            problems: Vec::new(),
            error: Some("fetching <b>main</b> failed".into()),
        });
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = crate::store::open(&url).await.unwrap();
        let live = Live::new(TriggerSet::new(Vec::new()));
        let loads = [good, failed];
        let page = triggers(&*store, &live, &loads, &config, &TriggersQuery::default())
            .await
            .unwrap();
        assert_inert(&page);
        assert!(
            page.contains("<h2>&lt;script&gt;alert(1)&lt;/script&gt;</h2>"),
            "{page}"
        );
        assert!(page.contains("<p>&lt;script&gt;alert(2)&lt;/script&gt;</p>"));
        assert!(page.contains("commit <code>0123abc</code>"));
        assert!(
            page.contains("<code class=\"where\">acme/api/.nightshift/triggers/bad.yml:2:8</code>"),
            "{page}"
        );
        assert!(page.contains("Reading them failed: <span class=\"message\">fetching &lt;b&gt;main&lt;/b&gt; failed</span>"), "{page}");
        // Filtered to one repository: only its block.
        let only = TriggersQuery {
            repo: Some("ACME/web".into()),
        };
        let page = triggers(&*store, &live, &loads, &config, &only)
            .await
            .unwrap();
        assert!(page.contains("acme/web: its own triggers") && !page.contains("acme/api: its own"));
    }

    /// The `<article>` of one trigger.
    fn article<'a>(page: &'a str, name: &str) -> &'a str {
        let start = page
            .find(&format!("<h2>{name}</h2>"))
            .unwrap_or_else(|| panic!("no {name} in {page}"));
        let end = start + page[start..].find("</article>").unwrap();
        &page[start..end]
    }

    async fn triggers_page(
        store: &dyn Store,
        live: &Live,
        config: &Config,
        query: &TriggersQuery,
    ) -> String {
        triggers(store, live, &[], config, query).await.unwrap()
    }
}
