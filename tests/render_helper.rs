//! The render helper (`src/trigger/isolate.rs`) as the service installs it, driven through the library: a
//! repository's trigger files checked and rendered in `nightshift render-helper`, the real binary. One test
//! per process matters here: the helpers are installed once per process (nextest runs each test in its own).

use std::path::Path;

use nightshift::config::{Config, ConfigSource};
use nightshift::ids::RepoName;
use nightshift::trigger::isolate;

fn config(dir: &Path) -> Config {
    let path = dir.join("nightshift.yml");
    std::fs::write(&path, "agents:\n  reply:\n    command: [cat]\n").unwrap();
    Config::load(&ConfigSource {
        path: &path,
        required: true,
        env: &|_| None,
    })
    .unwrap()
}

/// When no helper can be started, a repository's trigger files are not refused (nothing was learnt about
/// them): the read fails, so the last good read stays in force and the next event reads them again.
#[test]
fn without_a_helper_a_repositorys_files_are_neither_loaded_nor_refused() {
    let dir = tempfile::tempdir().unwrap();
    let agents = config(dir.path()).agent_kinds();
    isolate::install(dir.path().join("no-such-binary"));
    let repo = RepoName::parse("acme/api").unwrap();
    let files = [(
        ".nightshift/triggers/review.yml".to_owned(),
        "on: issues\nagent: reply\nprompt: \"look at {{ event.issue.title }}\"\n".to_owned(),
    )];
    let why = nightshift::trigger::repo::parse(&repo, &files, &agents)
        .err()
        .expect("no helper: no verdict on the files");
    assert!(why.contains("could not be started"), "{why}");
}
