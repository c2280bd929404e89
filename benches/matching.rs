//! Matching one event against 10,000 triggers over 1,000 repositories (10 triggers each, of mixed events and
//! filters). Target: at most 20 µs per event, which needs the index by event and repository.
//!
//! Also: a pathological branch/path pattern against a long path, which a backtracking matcher takes
//! exponential time for; compiled to automata it is linear in the path.
//!
//! Run: cargo bench --bench matching

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use nightshift::source::event::Event;
use nightshift::trigger::load::load_one;
use nightshift::trigger::pattern::{Pattern, PatternList};
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

fn pathological(c: &mut Criterion) {
    let pattern = format!("{}b", "**a*a+".repeat(12));
    let list = PatternList::new(vec![Pattern::parse(&pattern).unwrap()]).unwrap();
    let path = "a".repeat(5_000);
    assert!(!list.matches(&path));
    c.bench_function(
        "match a pathological pattern (`**a*a+` x12, b) against a 5,000-character path",
        |b| b.iter(|| black_box(list.matches(black_box(&path)))),
    );
    let branch = format!("{}x", "*a".repeat(30));
    let list = PatternList::new(vec![Pattern::parse(&branch).unwrap()]).unwrap();
    let name = "a".repeat(250);
    c.bench_function(
        "match `*a` x30 `x` against a 250-character branch name",
        |b| b.iter(|| black_box(list.matches(black_box(&name)))),
    );
}

criterion_group!(benches, bench, pathological);
criterion_main!(benches);
