//! Matching one event against 10,000 triggers over 1,000 repositories (10 triggers each, of mixed events and
//! filters). Target: at most 20 µs per event, which needs the index by event and repository.
//!
//! Run: cargo bench --bench matching

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use nightshift::source::event::Event;
use nightshift::trigger::load::load_one;
use nightshift::trigger::{MatchInput, TriggerSet};

const SHAPES: [&str; 10] = [
    "on:\n  issues:\n    types: [opened]\nagent: a\nprompt: \"Triage #{{ event.issue.number }}: {{ event.issue.title }}\"\n",
    "on:\n  issues:\n    types: [labeled]\n    labels: ['agent:fix']\nagent: a\nprompt: fix\noutput: pull_request\n",
    "on:\n  pull_request:\n    branches: [main, 'release/**']\nagent: a\nprompt: review\noutput: review\n",
    "on:\n  pull_request:\n    types: [closed]\nif: event.pull_request.merged\nagent: a\nprompt: notes\n",
    "on:\n  issue_comment:\n    command: /review\nagent: a\nprompt: \"{{ command.args }}\"\n",
    "on:\n  issue_comment:\n    command: /fix\nagent: a\nprompt: fix\n",
    "on:\n  push:\n    branches: [main]\n    paths: ['src/**']\nagent: a\nprompt: audit\noutput: check_run\n",
    "on:\n  workflow_run:\n    conclusions: [failure]\nagent: a\nprompt: diagnose\n",
    "on:\n  check_run:\n    types: [completed]\n    conclusions: [failure, timed_out]\nagent: a\nprompt: diagnose\n",
    "on:\n  issues:\n    types: [opened, edited]\nfrom: [OWNER, MEMBER]\nif: \"'bug' in event.issue.title | lower\"\nagent: a\nprompt: bug\n",
];

fn triggers() -> TriggerSet {
    let mut triggers = Vec::with_capacity(10_000);
    for repo in 0..1_000 {
        for (i, shape) in SHAPES.iter().enumerate() {
            let text = format!("{shape}repos: [org/repo-{repo}]\n");
            let path = format!("t-{repo}-{i}.yml");
            triggers
                .push(load_one(Path::new(&path), &text, None).expect("bench triggers are valid"));
        }
    }
    TriggerSet::new(triggers)
}

fn event() -> Event {
    let text = include_str!("../tests/fixtures/webhooks/issues/opened.json");
    let mut payload: serde_json::Value = serde_json::from_str(text).unwrap();
    payload["repository"]["full_name"] = "org/repo-500".into();
    Event::from_value("issues", payload).unwrap()
}

fn bench(c: &mut Criterion) {
    let set = triggers();
    let event = event();
    let input = MatchInput::default();
    assert_eq!(set.triggers().len(), 10_000);
    let fired = set.fired(&event, &input);
    assert_eq!(
        fired.len(),
        1,
        "one trigger of repo-500 fires for issues.opened"
    );
    c.bench_function("match issues.opened against 10k triggers / 1k repos", |b| {
        b.iter(|| black_box(set.fired(black_box(&event), &input)))
    });
    let mut quiet = event.clone();
    quiet.action = Some("pinned".into());
    c.bench_function("match a firing-nothing event against 10k triggers", |b| {
        b.iter(|| black_box(set.fired(black_box(&quiet), &input)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
