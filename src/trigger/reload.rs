//! Reloading trigger files while the service runs: on SIGHUP, and when a file in the triggers folder
//! changes (checked every two seconds: cheap, and unlike file events it works where a folder is swapped
//! under a symlink, as Kubernetes does with config maps). Deliveries keep flowing meanwhile: the set in
//! force is replaced whole. A file that became invalid keeps its last good version running, and its
//! problems are logged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use super::load::{AgentKinds, load, trigger_files};
use super::{Trigger, TriggerSet};
use crate::yaml::Diagnostic;

/// The triggers in force, shared by whoever matches events (the dispatcher, the schedule source) and
/// replaced whole by [`watch`] when trigger files change; with the problems the last reload found (the
/// dashboard shows them: the broken files' last good versions stay in force meanwhile).
pub struct Live(RwLock<Arc<TriggerSet>>, RwLock<Arc<Vec<Diagnostic>>>);

impl Live {
    pub fn new(set: TriggerSet) -> Self {
        Live(RwLock::new(Arc::new(set)), RwLock::default())
    }

    /// The triggers in force now.
    pub fn get(&self) -> Arc<TriggerSet> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, set: TriggerSet) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    /// What the last reload found wrong in the trigger files (none at start: `serve` refuses to start
    /// with problems).
    pub fn problems(&self) -> Arc<Vec<Diagnostic>> {
        self.1.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a reloaded set in force, with the problems found reloading it.
    pub fn set_reloaded(&self, set: TriggerSet, problems: Vec<Diagnostic>) {
        self.set(set);
        *self.1.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(problems);
    }
}

/// What the files under `paths` look like now: names, sizes and modification times.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    trigger_files(paths)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = meta.and_then(|m| m.modified().ok());
            (p, size, modified)
        })
        .collect()
}

/// Loads the files again. Valid files replace their triggers; a file with problems keeps the version of
/// it that is running (if any); a deleted file's triggers go.
pub fn reload(
    current: &TriggerSet,
    paths: &[PathBuf],
    agents: &AgentKinds,
) -> (TriggerSet, Vec<Diagnostic>) {
    let loaded = load(paths, Some(agents));
    let broken: HashSet<&Path> = loaded
        .diagnostics
        .iter()
        .map(|d| d.path.as_path())
        .collect();
    let fresh: HashSet<&Path> = loaded.triggers.iter().map(|t| t.path.as_path()).collect();
    let kept: Vec<Trigger> = current
        .triggers()
        .iter()
        .filter(|t| {
            broken.contains(t.path.as_path())
                && !fresh.contains(t.path.as_path())
                && t.path.exists()
        })
        .cloned()
        .collect();
    let mut triggers = loaded.triggers;
    triggers.extend(kept);
    (TriggerSet::new(triggers), loaded.diagnostics)
}

/// Watches for SIGHUP and for changed trigger files under `paths`, and swaps the reloaded set into `live`.
pub async fn watch(live: Arc<Live>, paths: Vec<PathBuf>, agents: AgentKinds) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(
                "cannot listen for SIGHUP ({e}); trigger files are still reloaded when they change"
            );
            None
        }
    };
    let mut seen = fingerprint(&paths);
    loop {
        let signalled = tokio::select! {
            _ = async {
                match hangup.as_mut() {
                    Some(s) => { s.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            () = tokio::time::sleep(Duration::from_secs(2)) => false,
        };
        let now = fingerprint(&paths);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        let (set, problems) = reload(&live.get(), &paths, &agents);
        for d in &problems {
            error!("{d} (the file's last good version, if any, stays in force)");
        }
        info!(
            triggers = set.triggers().len(),
            problems = problems.len(),
            "trigger files reloaded"
        );
        live.set_reloaded(set, problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_file_keeps_its_last_good_version_and_a_deleted_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let agents: AgentKinds = [("a".to_owned(), "command")].into();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("one.yml", "on: issues\nagent: a\nprompt: first\n");
        write("two.yml", "on: issues\nagent: a\nprompt: two\n");
        let paths = vec![dir.path().to_owned()];
        let (set, problems) = reload(&TriggerSet::new(Vec::new()), &paths, &agents);
        assert!(problems.is_empty());
        assert_eq!(set.triggers().len(), 2);

        write("one.yml", "on: issues\nagent: a\nprompt: second\n");
        let (set, _) = reload(&set, &paths, &agents);
        let one = set.triggers().iter().find(|t| t.name == "one").unwrap();
        assert_eq!(one.prompt, "second", "a valid change is taken");

        write("one.yml", "on: issues\nagent: nobody\nprompt: third\n");
        std::fs::remove_file(dir.path().join("two.yml")).unwrap();
        let (set, problems) = reload(&set, &paths, &agents);
        assert_eq!(problems.len(), 1);
        assert_eq!(set.triggers().len(), 1, "two.yml was deleted");
        assert_eq!(
            set.triggers()[0].prompt,
            "second",
            "the broken file keeps its last good version"
        );
    }
}
