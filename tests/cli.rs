//! The command line: `check` reports every problem with its position; `serve` refuses bad input clearly.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn nightshift(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nightshift"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("NIGHTSHIFT_WEBHOOK_SECRET")
        .env_remove("NIGHTSHIFT_CONFIG")
        .env_remove("NIGHTSHIFT_GITHUB_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_reports_every_problem_in_every_file_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let triggers = dir.path().join("triggers");
    std::fs::create_dir(&triggers).unwrap();
    std::fs::write(
        dir.path().join("nightshift.yml"),
        "agents:\n  reply: {command: [cat]}\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("a.yml"),
        "on:\n  issues:\n    types: [opend]\nagent: replly\nprompt: x\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("b.yml"),
        "on:\n  pull_request:\n    branchs: [main]\nagent: reply\nprompt: x\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("good.yml"),
        "on: issues\nagent: reply\nprompt: x\n",
    )
    .unwrap();

    let out = nightshift(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let expected = "\
triggers/a.yml:3:13: error: `opend` is not an activity type of `issues`
  hint: did you mean `opened`?
triggers/a.yml:4:8: error: agent `replly` is not a profile in the service config
  hint: did you mean `reply`?
triggers/b.yml:3:5: error: unknown field `branchs`, expected one of types, branches, branches-ignore, tags, tags-ignore, paths, paths-ignore, labels, conclusions, workflows, command
  hint: did you mean `branches`?
";
    assert_eq!(stdout, expected);
    assert!(text(&out.stderr).contains("3 problem(s) found"));

    let out = nightshift(dir.path(), &["check", "triggers/good.yml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("ok: 1 trigger(s)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_projects_example_triggers_and_config_check_clean() {
    let out = nightshift(&common::manifest_dir(), &["check"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn serve_refuses_to_start_on_invalid_triggers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("triggers")).unwrap();
    std::fs::write(
        dir.path().join("triggers/x.yml"),
        "on: issues\nagent: nope\nprompt: x\n",
    )
    .unwrap();
    let out = nightshift(
        dir.path(),
        &["serve"],
        &[
            ("NIGHTSHIFT_WEBHOOK_SECRET", "s"),
            ("NIGHTSHIFT_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(
        stderr.contains("triggers/x.yml:2:8: error: agent `nope` is not a profile"),
        "{stderr}"
    );
}

/// (Without any credentials either, serve starts and offers the App's setup in a browser: tests/setup.rs.)
#[test]
fn serve_with_a_token_but_without_a_webhook_secret_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = nightshift(
        dir.path(),
        &["serve"],
        &[
            ("NIGHTSHIFT_LISTEN", "127.0.0.1:0"),
            ("NIGHTSHIFT_GITHUB_TOKEN", "ghp_not_used"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: no webhook secret configured: set NIGHTSHIFT_WEBHOOK_SECRET"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_config_file_names_file_line_column_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nightshift.yml"),
        "workers: 2\nlisen: 0.0.0.0:80\n",
    )
    .unwrap();
    let out = nightshift(
        dir.path(),
        &["serve"],
        &[("NIGHTSHIFT_WEBHOOK_SECRET", "s")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nightshift.yml:2:1: error: unknown field `lisen`"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: did you mean `listen`?"), "{stderr}");
}

#[test]
fn bad_limits_name_file_line_column_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let triggers = dir.path().join("triggers");
    std::fs::create_dir(&triggers).unwrap();
    std::fs::write(
        dir.path().join("nightshift.yml"),
        "agents:\n  reply: {command: [cat]}\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("fix.yml"),
        "on: issues\nagent: reply\nprompt: x\noutput: pull_request\nlimits:\n  max_body: 2 MB\n  \
         paths:\n    - \"src/**\"\n    - \"!docs/[a-Z]*\"\n  labels: [bug, \"\"]\n  secrets: ignore\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("typo.yml"),
        "on: issues\nagent: reply\nprompt: x\nlimits:\n  max_file: 3\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("negated.yml"),
        "on: issues\nagent: reply\nprompt: x\nlimits:\n  paths: [\"!.github/**\"]\n  max_body: 70000\n",
    )
    .unwrap();
    let out = nightshift(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let expected = "\
triggers/fix.yml:11:12: error: unknown variant `ignore`, expected one of refuse, allow
triggers/negated.yml:6:13: error: limits: max_body is 70000 bytes, more than GitHub accepts (65536)
  hint: write at most 64KiB
triggers/negated.yml:5:11: error: limits: a list with `!` patterns needs at least one positive pattern
  hint: add the pattern to exclude from, e.g. `'**'` before the `!` patterns
triggers/typo.yml:5:3: error: unknown field `max_file`, expected one of max_body, max_inline_comments, labels, paths, max_files, max_lines, secrets
  hint: did you mean `max_files`?
";
    assert_eq!(stdout, expected);

    std::fs::write(
        triggers.join("fix.yml"),
        "on: issues\nagent: reply\nprompt: x\noutput: pull_request\nlimits:\n  max_body: 2 MB\n  \
         paths:\n    - \"src/**\"\n    - \"!docs/[a-Z]*\"\n  labels: [bug, \"\"]\n",
    )
    .unwrap();
    let out = nightshift(dir.path(), &["check", "triggers/fix.yml"], &[]);
    let expected = "\
triggers/fix.yml:6:13: error: limits: max_body is 2000000 bytes, more than GitHub accepts (65536)
  hint: write at most 64KiB
triggers/fix.yml:10:17: error: limits: `` is not a label name
  hint: write label names as GitHub shows them, e.g. bug
triggers/fix.yml:9:7: error: limits: bad pattern: range `a-Z` in `!docs/[a-Z]*` is not allowed
  hint: ranges must be within a-z, A-Z or 0-9
";
    assert_eq!(text(&out.stdout), expected);

    // The service's limits are checked the same way, when the service starts or checks.
    std::fs::remove_dir_all(&triggers).unwrap();
    std::fs::create_dir(&triggers).unwrap();
    std::fs::write(
        dir.path().join("nightshift.yml"),
        "agents:\n  reply: {command: [cat]}\nlimits:\n  max_body: lots\n",
    )
    .unwrap();
    let out = nightshift(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nightshift.yml:4:13: error: limits: `lots` is not a size\n  hint: write a number of bytes, or a size such as 20KB, 16KiB"),
        "{stderr}"
    );
}

#[test]
fn an_explicit_config_file_that_is_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = nightshift(dir.path(), &["--config", "missing.yml", "check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.yml:1:1: error: cannot read the config file"));
}

#[test]
fn every_broken_trigger_in_the_corpus_gets_its_exact_message() {
    let root = common::manifest_dir();
    let corpus = root.join("tests/corpus/broken");
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "the corpus lost cases");
    for case in cases {
        let relative = case
            .strip_prefix(&root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let expected = std::fs::read_to_string(case.with_extension("expected")).unwrap();
        let out = nightshift(&root, &["check", &relative], &[]);
        assert_eq!(out.status.code(), Some(1), "{relative} passed the check");
        assert_eq!(text(&out.stdout), expected, "{relative}");
    }
}

#[test]
fn match_shows_what_fires_and_why_the_rest_does_not_as_stable_json() {
    let root = common::manifest_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&common::fixture("webhooks/issues/labeled.json")).unwrap();
    payload["label"]["name"] = "agent:fix".into();
    let event = dir.path().join("labeled.json");
    std::fs::write(&event, serde_json::to_vec(&payload).unwrap()).unwrap();
    let args = [
        "match",
        "--event",
        event.to_str().unwrap(),
        "--event-name",
        "issues",
        "--json",
    ];
    // A label carries no author association: offline, the labeler's standing is unknown, so untrusted.
    let out = nightshift(&root, &args, &[]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fired"].as_array().unwrap().len(), 0, "{report:#}");
    let fix = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["trigger"] == "fix-labeled-issues")
        .unwrap();
    assert_eq!(
        fix["reason"],
        "the payload does not say how Codertocat relates to the repository and it was not looked up (that needs GitHub credentials), so they are not trusted (from [OWNER, MEMBER, COLLABORATOR])"
    );
    let mut args = args.to_vec();
    args.extend(["--assume", "COLLABORATOR"]);
    let out = nightshift(&root, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fired = report["fired"].as_array().unwrap();
    assert_eq!(fired.len(), 1, "{report:#}");
    assert_eq!(fired[0]["trigger"], "fix-labeled-issues");
    assert_eq!(fired[0]["agent"], "demo");
    assert_eq!(fired[0]["output"], "pull_request");
    let prompt = fired[0]["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("Fix issue #1 in Codertocat/Hello-World: <untrusted-")
            && prompt.contains(">Spelling error in the README file</untrusted-"),
        "{prompt}"
    );
    assert!(
        prompt.contains("<untrusted-"),
        "the issue body is fenced: {prompt}"
    );
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 5);
    let review = skipped
        .iter()
        .find(|s| s["trigger"] == "review-pull-requests")
        .unwrap();
    assert_eq!(review["reason"], "it does not trigger on `issues`");

    let out = nightshift(
        &root,
        &[
            "match",
            "--event",
            "tests/fixtures/webhooks/issues/labeled.json",
            "--event-name",
            "issues",
            "--assume",
            "OWNER",
        ],
        &[],
    );
    assert!(
        text(&out.stdout)
            .contains("skips: fix-labeled-issues: labels [bug] include none of [agent:fix]"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_readme_demo_event_fires_the_triage_example() {
    let out = nightshift(
        &common::manifest_dir(),
        &[
            "match",
            "--event",
            "tests/fixtures/webhooks/issues/opened.json",
            "--event-name",
            "issues",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("fires: triage-new-issues (agent demo, output comment)"),
        "{stdout}"
    );
}

#[test]
fn the_published_schema_is_the_one_the_binary_generates() {
    let root = common::manifest_dir();
    let out = nightshift(&root, &["schema"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let published = std::fs::read_to_string(root.join("docs/trigger.schema.json")).unwrap();
    assert_eq!(
        text(&out.stdout),
        published,
        "run `nightshift schema > docs/trigger.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let properties = schema["properties"].as_object().unwrap();
    for key in [
        "on",
        "agent",
        "prompt",
        "output",
        "if",
        "from",
        "repos",
        "concurrency",
        "timeout",
        "skills",
    ] {
        assert!(properties.contains_key(key), "schema lacks `{key}`");
    }
}

#[test]
fn prompt_shows_exactly_what_each_agent_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let triggers = root.join("triggers");
    std::fs::create_dir(&triggers).unwrap();
    std::fs::write(
        root.join("nightshift.yml"),
        "agents:\n  script: {command: [cat]}\n  coder: {codex: {model: gpt-5.5}}\n  \
         chat: {openai: {model: llama3, base_url: 'http://localhost:11434/v1'}}\n\
         limits: {max_body: 20KB, max_lines: 100}\n",
    )
    .unwrap();
    let trigger = |name: &str, agent: &str, extra: &str| {
        std::fs::write(
            triggers.join(format!("{name}.yml")),
            format!(
                "on:\n  issues:\n    types: [opened]\nagent: {agent}\n{extra}prompt: Triage issue {{{{ event.issue.number }}}}.\n"
            ),
        )
        .unwrap();
    };
    trigger("a-script", "script", "skills: auto\n");
    trigger(
        "b-coder",
        "coder",
        "skills: [house-style]\noutput: {type: pull_request, labels: [needs-review]}\n\
         limits: {paths: ['src/**'], max_lines: 40}\n",
    );
    trigger("c-chat", "chat", "skills: auto\n");
    // The repository: its AGENTS.md files and a skill of its own; the service has one skill too.
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("web")).unwrap();
    common::git(root, &["init", "--quiet", repo.to_str().unwrap()]);
    std::fs::write(
        repo.join("AGENTS.md"),
        "Run cargo test before you finish.\n",
    )
    .unwrap();
    std::fs::write(repo.join("web/AGENTS.md"), "Use pnpm here.\n").unwrap();
    let skill = repo.join(".agents/skills/house-style");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(
        skill.join("SKILL.md"),
        "---\nname: house-style\ndescription: How this repository writes code.\n---\nShort functions.\n",
    )
    .unwrap();
    let service = root.join("skills/review-checklist");
    std::fs::create_dir_all(&service).unwrap();
    std::fs::write(
        service.join("SKILL.md"),
        "---\nname: review-checklist\ndescription: What every review checks.\n---\nTests first.\n",
    )
    .unwrap();
    let event = root.join("event.json");
    std::fs::write(&event, common::fixture("webhooks/issues/opened.json")).unwrap();

    let out = nightshift(
        root,
        &[
            "prompt",
            "--event",
            "event.json",
            "--event-name",
            "issues",
            "--repo",
            "repo",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let sections: Vec<&str> = stdout.split("=== ").filter(|s| !s.is_empty()).collect();
    assert_eq!(sections.len(), 3, "{stdout}");

    // A command agent: the trigger's prompt as it is; the skills wait in the worktree.
    assert!(sections[0].starts_with("a-script → agent `script` (command), output comment\n"));
    // The limits in force: the service's (nightshift.yml) under the trigger's own, then the defaults.
    assert!(
        sections[0].contains(
            "\nlimits: bodies ≤ 20000 bytes, ≤ 50 inline comments, labels: none, paths: **, \
             !.github/workflows/**, !.github/actions/**, ≤ 1000 files, ≤ 100 lines, secrets: refused\n"
        ),
        "{}",
        sections[0]
    );
    assert!(
        sections[1].contains(
            "\nlimits: bodies ≤ 20000 bytes, ≤ 50 inline comments, labels: needs-review, paths: src/**, \
             ≤ 1000 files, ≤ 40 lines, secrets: refused\n"
        ),
        "{}",
        sections[1]
    );
    assert!(sections[0].contains("skills in the worktree (.agents/skills, .claude/skills), found by the agent: house-style (.agents/skills), review-checklist (service)"));
    assert!(
        sections[0].ends_with("--- prompt ---\nTriage issue 1.\n\n"),
        "{}",
        sections[0]
    );

    // An agent CLI: the repository's instructions, the task, and how the result is delivered.
    let coder = sections[1];
    assert!(coder.starts_with("b-coder → agent `coder` (codex), output pull_request\n"));
    assert!(coder.contains("skills in the worktree (.agents/skills, .claude/skills), found by the agent: house-style (.agents/skills)\n"));
    let instructions = coder
        .find("## AGENTS.md\n\nRun cargo test before you finish.")
        .unwrap();
    let nested = coder.find("## web/AGENTS.md\n\nUse pnpm here.").unwrap();
    let task = coder.find("# Task\n\nTriage issue 1.").unwrap();
    assert!(instructions < nested && nested < task, "{coder}");
    assert!(coder.contains("nightshift commits what you changed and opens the pull request"));
    assert!(
        !coder.contains("Short functions."),
        "a CLI reads skill bodies itself, on demand"
    );

    // A model endpoint: no tools, so the skills are in the prompt, index and bodies.
    let chat = sections[2];
    assert!(chat.contains(
        "skills in the prompt: house-style (.agents/skills), review-checklist (service)"
    ));
    assert!(chat.contains("- **house-style**: How this repository writes code."));
    assert!(chat.contains("## Skill: house-style\n\nShort functions."));
    assert!(chat.contains("## Skill: review-checklist\n\nTests first."));

    // One trigger only; and an event nothing fires for says so and exits 1.
    let out = nightshift(
        root,
        &[
            "prompt",
            "--event",
            "event.json",
            "--event-name",
            "issues",
            "--repo",
            "repo",
            "--trigger",
            "c-chat",
        ],
        &[],
    );
    assert_eq!(text(&out.stdout).matches("=== ").count(), 1);
    let out = nightshift(
        root,
        &[
            "prompt",
            "--event",
            "event.json",
            "--event-name",
            "pull_request",
            "--repo",
            "repo",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no trigger fires for this event"));
}

#[test]
fn check_names_every_bad_verify_step_with_file_line_column_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let triggers = dir.path().join("triggers");
    std::fs::create_dir(&triggers).unwrap();
    std::fs::write(
        dir.path().join("nightshift.yml"),
        "agents:\n  reply: {command: [cat]}\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("fix.yml"),
        "on: issues\nagent: reply\nprompt: x\noutput: comment\nverify:\n  - name: tests\n    run: cargo test\n    \
         timeout: ten minutes\n  - name: tests\n    argv: []\n  - name: lint\n    run: x\n    argv: [x]\n  \
         - name: ''\n    run: x\n  - name: nothing\nverify_rounds: 6\nverify_fail: draft\n",
    )
    .unwrap();
    let out = nightshift(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let expected = "\
triggers/fix.yml:8:14: error: `ten minutes` is not a duration
  hint: write e.g. 90s, 10m, 1h
triggers/fix.yml:9:11: error: verify step `tests` is listed twice
  hint: give each step its own name
triggers/fix.yml:10:11: error: verify step `tests` has an empty `argv`
  hint: name the program first, e.g. argv: [cargo, test]
triggers/fix.yml:13:11: error: verify step `lint` has both `run` and `argv`
  hint: keep one: `run` is a shell line, `argv` a program and its arguments
triggers/fix.yml:14:11: error: a verify step needs a name
  hint: name the step with letters, digits, spaces, `-`, `_`, `.` or `:`, e.g. tests
triggers/fix.yml:16:5: error: verify step `nothing` has neither `run` nor `argv`
  hint: add e.g. run: cargo test --locked, or argv: [cargo, test]
triggers/fix.yml:17:16: error: verify_rounds is 6, more than 5
  hint: write at most 5; 0 runs the agent once and never again
triggers/fix.yml:18:14: error: `verify_fail: draft` needs output pull_request, and this trigger's output is `comment`
  hint: only a pull request can be opened as a draft; remove it, or write verify_fail: fail
";
    assert_eq!(text(&out.stdout), expected);

    // A step with an unknown key is a structural mistake, named with its place and the keys there are.
    std::fs::write(
        triggers.join("fix.yml"),
        "on: issues\nagent: reply\nprompt: x\nverify:\n  - name: tests\n    command: cargo test\n",
    )
    .unwrap();
    let out = nightshift(dir.path(), &["check"], &[]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("triggers/fix.yml:6:5: error: unknown field `command`"),
        "{stdout}"
    );

    // The service's defaults are checked the same way.
    std::fs::write(
        triggers.join("fix.yml"),
        "on: issues\nagent: reply\nprompt: x\nverify: []\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("nightshift.yml"),
        "agents:\n  reply: {command: [cat]}\nverify:\n  - repos: [acme]\n    rounds: 9\n    steps:\n      \
         - {name: tests, run: make test, timeout: 0s}\n",
    )
    .unwrap();
    let out = nightshift(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for line in [
        "nightshift.yml:4:13: error: verify: `acme` is not an owner/name pattern\n  hint: write e.g. acme/api or acme/*",
        "nightshift.yml:5:13: error: verify: rounds is 9, more than 5",
        "nightshift.yml:7:48: error: verify: verify step `tests` has a timeout under a second",
    ] {
        assert!(stderr.contains(line), "{line}\n---\n{stderr}");
    }
}

#[test]
fn prompt_shows_the_verify_steps_in_force_and_the_follow_up_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let triggers = root.join("triggers");
    std::fs::create_dir(&triggers).unwrap();
    // The fixture's repository is Codertocat/Hello-World: the first default that matches it applies.
    std::fs::write(
        root.join("nightshift.yml"),
        "agents:\n  coder: {codex: {model: gpt-5.5}}\nverify:\n  - repos: [acme/*]\n    \
         steps: [{name: acme, run: 'true'}]\n  - repos: ['codertocat/*']\n    rounds: 1\n    steps:\n      \
         - {name: tests, run: cargo test --locked}\n      - {name: lint, argv: [cargo, clippy, --, -D warnings], timeout: 5m}\n",
    )
    .unwrap();
    let trigger = |name: &str, extra: &str| {
        std::fs::write(
            triggers.join(format!("{name}.yml")),
            format!("on:\n  issues:\n    types: [opened]\nagent: coder\noutput: pull_request\n{extra}prompt: Fix it.\n"),
        )
        .unwrap();
    };
    trigger("a-default", "");
    trigger(
        "b-own",
        "verify:\n  - {name: unit, run: npm test, timeout: 90s}\nverify_rounds: 0\nverify_fail: draft\n",
    );
    trigger("c-off", "verify: []\n");
    let repo = root.join("repo");
    common::git(root, &["init", "--quiet", repo.to_str().unwrap()]);
    std::fs::write(
        root.join("event.json"),
        common::fixture("webhooks/issues/opened.json"),
    )
    .unwrap();
    let out = nightshift(
        root,
        &[
            "prompt",
            "--event",
            "event.json",
            "--event-name",
            "issues",
            "--repo",
            "repo",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let sections: Vec<&str> = stdout.split("=== ").filter(|s| !s.is_empty()).collect();
    assert_eq!(sections.len(), 3, "{stdout}");

    let default = sections[0];
    assert!(
        default.contains(
            "\nverify (nightshift.yml's default for this repository; 1 more round(s) for the agent when a step \
             fails; then: fail):\n  tests: cargo test --locked (timeout 10m)\n  \
             lint: cargo clippy -- '-D warnings' (timeout 5m)\n\
             --- follow-up prompt when a step fails ---\n# Verification failed\n\n\
             After you finished, nightshift ran the verification step `tests` in the working directory, and it \
             failed (<exit status>).\n\nIts output:\n\n<untrusted-"
        ),
        "{default}"
    );
    assert!(
        default.contains("<the end of the step's output>\n</untrusted-"),
        "{default}"
    );
    assert!(
        default.contains("This is the last round: if the step still fails, the work is not delivered as verified.\n\n--- prompt ---\n"),
        "{default}"
    );

    let own = sections[1];
    assert!(
        own.contains(
            "\nverify (the trigger's; 0 more round(s) for the agent when a step fails; then: draft):\n  \
             unit: npm test (timeout 1m 30s)\n--- prompt ---\n"
        ),
        "no follow-up with 0 rounds: {own}"
    );
    assert!(
        !own.contains("acme") && !own.contains("cargo test"),
        "{own}"
    );

    assert!(
        sections[2].contains("\nverify: none (the trigger's `verify: []`)\n--- prompt ---\n"),
        "{}",
        sections[2]
    );
}

#[test]
fn a_check_run_output_is_refused_up_front_when_the_service_runs_with_a_token() {
    // GitHub lets only an App create check runs: with a personal token, a trigger posting one would fail
    // at every delivery. check and serve say so at once, with the output's place.
    let dir = tempfile::tempdir().unwrap();
    let triggers = dir.path().join("triggers");
    std::fs::create_dir(&triggers).unwrap();
    std::fs::write(
        dir.path().join("nightshift.yml"),
        "agents:\n  reply: {command: [cat]}\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("lint.yml"),
        "on: pull_request\nagent: reply\nprompt: x\noutput: {type: check_run, name: lint}\n",
    )
    .unwrap();
    std::fs::write(
        triggers.join("reply.yml"),
        "on: issues\nagent: reply\nprompt: x\noutput: comment\n",
    )
    .unwrap();
    let token = [("NIGHTSHIFT_GITHUB_TOKEN", "ghp_not_used")];

    let out = nightshift(dir.path(), &["check"], &token);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let expected = "\
triggers/lint.yml:4:9: error: output `check_run` needs a GitHub App: GitHub does not let a personal token create check runs
  hint: run nightshift as a GitHub App (github.app_id and private_key), or use output: comment, review or issue
";
    assert_eq!(text(&out.stdout), expected);
    assert!(text(&out.stderr).contains("1 problem(s) found"));

    let mut serve_env = token.to_vec();
    serve_env.extend([
        ("NIGHTSHIFT_WEBHOOK_SECRET", "s"),
        ("NIGHTSHIFT_LISTEN", "127.0.0.1:0"),
    ]);
    let out = nightshift(dir.path(), &["serve"], &serve_env);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(
        stderr.contains("triggers/lint.yml:4:9: error: output `check_run` needs a GitHub App"),
        "{stderr}"
    );

    // Without a token (an App, or no credentials yet: a dry run), the same files are fine.
    let out = nightshift(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}
