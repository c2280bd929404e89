//! The built-in agent backends end to end: the real Codex CLI and Claude Code (from npm, at the versions
//! tests/agent-clis pins) and an OpenAI-compatible endpoint, each run by the real service against a scripted
//! model server on loopback, with results delivered to the fake GitHub.

mod common;

use common::model_server::{ChatReply, ModelServer, Step};
use common::{Auth, Spine, git, path_with_agent_clis};
use nightshift::agent::cli;
use nightshift::config::CliOptions;
use nightshift::store::{JobRecord, JobState, LogLine};
use serde_json::json;
use std::path::Path;

/// What the repository says about itself on its default branch: instructions and a skill of its own.
fn seed_repository(spine: &Spine) {
    spine.commit(
        "main",
        "main",
        "AGENTS.md",
        "Always mention the giraffe rule.\n",
    );
    spine.commit(
        "main",
        "main",
        ".agents/skills/house-style/SKILL.md",
        "---\nname: house-style\ndescription: The okapi house style for this repository.\n---\nWrite like an okapi.\n",
    );
}

fn service_skill(spine: &Spine) {
    let dir = spine.dir.path().join("skills/review-checklist");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("SKILL.md"),
        "---\nname: review-checklist\ndescription: The zebra checklist for reviews.\n---\nCheck the stripes.\n",
    )
    .unwrap();
}

fn cli_options(program: &str) -> CliOptions {
    CliOptions {
        program: program.into(),
        model: Some("gpt-5.5".into()),
        base_url: Some("http://127.0.0.1:9/v1".into()),
        api_key_env: "KEY".into(),
        permission_mode: "acceptEdits".into(),
        bearer: false,
        allowed_tools: vec!["Bash(cargo test:*)".into(), "Edit".into()],
        args: vec![],
    }
}

/// One job end to end: a world with `trigger` and the agent profile line `profile`, the service started with
/// `env`, and the payload `payload` of `event` delivered; returns the world, the finished job and its log.
async fn one_job(
    trigger: (&str, &str),
    profile: String,
    config: &str,
    env: &[(&str, &str)],
    event: &str,
    payload: &str,
) -> (Spine, JobRecord, Vec<LogLine>) {
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    seed_repository(&spine);
    service_skill(&spine);
    spine.add_agents(&profile);
    common::append_config(&spine, config);
    spine.start_with_env(env).await;
    let status = spine
        .deliver(event, "delivery-1", &spine.payload(payload))
        .await;
    assert_eq!(status, 202);
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let log = spine.job_log(job.id).await;
    (spine, job, log)
}

#[tokio::test]
async fn every_flag_nightshift_passes_is_in_the_installed_clis_help() {
    let bin = common::agent_clis();
    let out = Path::new("/tmp/out");
    let codex = cli_options(bin.join("codex").to_str().unwrap());
    let argv = cli::codex_argv(&codex, Path::new("/tmp/w"), out);
    assert!(cli::flags(&argv).len() >= 5, "{argv:?}");
    let missing = cli::check_flags(&argv, &["exec", "--help"], &[])
        .await
        .unwrap();
    assert!(missing.is_empty(), "codex exec --help lacks {missing:?}");
    // A follow-up round: `exec`'s options before `resume` (which has no `--cd` or `--add-dir` of its own).
    let session = "019a1b2c-3d4e-7f60-8a9b-0c1d2e3f4a5b";
    let argv = cli::codex_resume_argv(&codex, Path::new("/tmp/w"), out, session).unwrap();
    let missing = cli::check_flags(&argv, &["exec", "--help"], &[])
        .await
        .unwrap();
    assert!(missing.is_empty(), "codex exec --help lacks {missing:?}");

    let claude = cli_options(bin.join("claude").to_str().unwrap());
    let argv = cli::claude_argv(&claude, out, Some(5));
    assert!(cli::flags(&argv).len() >= 8, "{argv:?}");
    let missing = cli::check_flags(&argv, &["--help"], &[]).await.unwrap();
    assert_eq!(
        missing,
        cli::CLAUDE_UNLISTED_FLAGS,
        "claude --help lacks more than the flags proven by behaviour"
    );
    let missing = cli::check_flags(&argv, &["--help"], cli::CLAUDE_UNLISTED_FLAGS)
        .await
        .unwrap();
    assert!(missing.is_empty(), "claude --help lacks {missing:?}");
    let resumed = cli::claude_resume_argv(&claude, out, Some(5), session).unwrap();
    let missing = cli::check_flags(&resumed, &["--help"], cli::CLAUDE_UNLISTED_FLAGS)
        .await
        .unwrap();
    assert!(missing.is_empty(), "claude --help lacks {missing:?}");

    // The check can fail: a flag the CLI does not have is reported.
    let mut bogus = argv.clone();
    bogus.push("--no-such-flag".into());
    let missing = cli::check_flags(&bogus, &["--help"], cli::CLAUDE_UNLISTED_FLAGS)
        .await
        .unwrap();
    assert_eq!(missing, ["--no-such-flag"]);
}

#[tokio::test]
async fn a_codex_job_edit_becomes_a_pull_request() {
    let model = ModelServer::agent(vec![
        Step::Patch(
            "*** Begin Patch\n*** Add File: FIXED.md\n+Fixed by codex.\n*** End Patch\n".into(),
        ),
        Step::Text("Added FIXED.md as the issue asked.".into()),
    ])
    .await;
    let trigger = (
        "fix.yml",
        "on:\n  issues:\n    types: [labeled]\nagent: fixer\nskills: auto\nprompt: Fix issue {{ event.issue.number }}.\noutput: pull_request\n",
    );
    let (spine, job, log) = one_job(
        trigger,
        format!(
        "  fixer: {{codex: {{model: gpt-5.5, base_url: \"{}/v1\", api_key_env: TEST_CODEX_KEY}}, timeout: 120s}}\n",
        model.url
    ),
        "",
        &[
            ("PATH", &path_with_agent_clis()),
            ("TEST_CODEX_KEY", "sk-test-codex"),
        ],
        "issues",
        "issues/labeled.json",
    )
    .await;
    let jobs = [job];
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?}\n{log:#?}",
        jobs[0].error
    );

    // The edit is a pull request whose description is Codex's last message.
    let pulls = spine.github.pulls();
    assert_eq!(pulls.len(), 1);
    assert!(
        pulls[0].body.contains("Added FIXED.md as the issue asked."),
        "{}",
        pulls[0].body
    );
    let branch = &pulls[0].head;
    assert_eq!(
        git(&spine.remote, &["show", &format!("{branch}:FIXED.md")]),
        "Fixed by codex."
    );
    let files = git(&spine.remote, &["show", "--name-only", "--format=", branch]);
    assert_eq!(files, "FIXED.md", "only the agent's change is committed");

    // Codex was told the repository's instructions (from main) and found both skills where it looks.
    let requests = model.requests();
    assert_eq!(requests.len(), 2, "one request per model turn");
    assert_eq!(
        requests[0].header("authorization"),
        Some("Bearer sk-test-codex")
    );
    let first = requests[0].body.to_string();
    assert!(first.contains("giraffe rule"), "AGENTS.md reached Codex");
    assert!(first.contains("Fix issue 1."));
    assert!(
        first.contains("okapi house style"),
        "the repository's skill"
    );
    assert!(first.contains("zebra checklist"), "the service's skill");
    // Progressive disclosure: names and descriptions up front, bodies only when the model opens them.
    assert!(!first.contains("Write like an okapi."), "{first}");
    assert!(!first.contains("Check the stripes."));
    assert_eq!(requests[0].body["model"], "gpt-5.5");

    // What it spent is kept with the job, and the log says what it did.
    let usage = jobs[0].usage.clone().expect("usage recorded");
    assert!(usage.input_tokens.unwrap() >= 1000, "{usage:?}");
    assert!(usage.output_tokens.unwrap() >= 50, "{usage:?}");
    assert_eq!(usage.model.as_deref(), Some("gpt-5.5"));
    let lines: Vec<&str> = log.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("changed ") && l.contains("FIXED.md")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("(codex, in its box)")),
        "Codex ran in nightshift's box: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("skills in the worktree: house-style (.agents/skills)")),
        "{lines:#?}"
    );
    spine.assert_no_unexpected_calls();
}

/// Codex writes `review.json` in the job's output folder (writable through `--add-dir`, outside its
/// worktree), and it becomes a review with an inline comment.
#[tokio::test]
async fn a_codex_review_file_becomes_a_review_with_inline_comments() {
    let trigger = (
        "review.yml",
        "on: pull_request\nagent: reviewer\nprompt: Review it.\noutput: review\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    // The first job of a fresh store is job 1; its output folder is known in advance.
    let review = json!({"summary": "One thing.", "comments": [
        {"path": "README.md", "line": 1, "body": "Say what it does."}]});
    let output = spine.dir.path().join("data/jobs/1-1/output/review.json");
    let model = ModelServer::agent(vec![
        Step::Patch(format!(
            "*** Begin Patch\n*** Add File: {}\n+{review}\n*** End Patch\n",
            output.display()
        )),
        Step::Text("Reviewed.".into()),
    ])
    .await;
    spine.add_agents(&format!(
        "  reviewer: {{codex: {{model: gpt-5.5, base_url: \"{}/v1\", api_key_env: TEST_CODEX_KEY}}, timeout: 120s}}\n",
        model.url
    ));
    spine
        .start_with_env(&[
            ("PATH", &path_with_agent_clis()),
            ("TEST_CODEX_KEY", "sk-test-codex"),
        ])
        .await;
    let head = git(&spine.remote, &["rev-parse", "main"]);
    let mut payload: serde_json::Value =
        serde_json::from_slice(&spine.payload("pull_request/opened.json")).unwrap();
    payload["pull_request"]["head"]["sha"] = head.clone().into();
    payload["pull_request"]["base"]["ref"] = "main".into();
    let body = serde_json::to_vec(&payload).unwrap();
    // The pull request changes README.md's first line, where the review comments (on GitHub a review comment
    // must be on a line of the diff).
    spine.github.set_pull_patches(
        "Codertocat/Hello-World",
        2,
        &[("README.md", "@@ -1 +1 @@\n-# Old title\n+# Hello-World")],
    );
    assert_eq!(
        spine.deliver("pull_request", "codex-review", &body).await,
        202
    );
    let job = spine.wait_for_finished_jobs(1).await.remove(0);
    let log = spine.job_log(job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}\n{log:#?}", job.error);
    let created = spine.github.created();
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(created[0].operation, "pulls/create-review");
    let posted = &created[0].body;
    assert!(posted["body"].as_str().unwrap().starts_with("One thing."));
    assert_eq!(posted["commit_id"], head.as_str());
    assert_eq!(
        posted["comments"][0],
        json!({"path": "README.md", "line": 1, "side": "RIGHT", "body": "Say what it does."})
    );
    // The prompt told Codex where and how to write the review.
    let first = model.requests()[0].body.to_string();
    assert!(first.contains("review.json"), "{first}");
}

#[tokio::test]
async fn a_claude_job_answer_becomes_a_comment() {
    let model = ModelServer::agent(vec![
        Step::Tool {
            name: "Glob".into(),
            input: json!({"pattern": "**/*.md"}),
        },
        Step::Text("Claude read the README: it looks good.".into()),
    ])
    .await;
    let trigger = (
        "answer.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reviewer\nskills: [review-checklist]\nprompt: Look at issue {{ event.issue.number }}.\n",
    );
    let (spine, job, log) = one_job(
        trigger,
        format!(
        "  reviewer: {{claude: {{model: claude-sonnet-4-5, base_url: \"{}\", api_key_env: TEST_CLAUDE_KEY}}, max_turns: 5, timeout: 120s}}\n",
        model.url
    ),
        "gateway:\n  prices:\n    claude-sonnet-4-5: {input: 3.0, output: 15.0, cached_input: 0.3}\n",
        &[
            ("PATH", &path_with_agent_clis()),
            ("TEST_CLAUDE_KEY", "sk-ant-test"),
        ],
        "issues",
        "issues/opened.json",
    )
    .await;
    let jobs = [job];
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?}\n{log:#?}",
        jobs[0].error
    );

    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0]
            .body
            .contains("Claude read the README: it looks good."),
        "{}",
        comments[0].body
    );

    let requests: Vec<_> = model
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/messages")
        .collect();
    assert!(requests.len() >= 2, "a tool turn and an answer");
    assert_eq!(requests[0].header("x-api-key"), Some("sk-ant-test"));
    let last = requests.last().unwrap().body.to_string();
    assert!(last.contains("giraffe rule"), "AGENTS.md reached Claude");
    assert!(last.contains("zebra checklist"), "the named skill");
    assert!(
        !last.contains("Check the stripes."),
        "its body only when opened"
    );
    assert!(
        !last.contains("okapi house style"),
        "a skill the trigger did not name is not offered"
    );
    assert_eq!(requests[0].body["model"], "claude-sonnet-4-5");

    let usage = jobs[0].usage.clone().expect("usage recorded");
    assert_eq!(usage.turns, Some(2), "{usage:?}");
    assert!(usage.output_tokens.unwrap() >= 20, "{usage:?}");
    // Metered by the gateway: two turns of 400 input tokens (100 from the cache) and 20 output tokens each,
    // at the configured prices.
    assert_eq!(
        (
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens
        ),
        (Some(800), Some(200), Some(40)),
        "{usage:?}"
    );
    let cost = usage.cost_usd.expect("priced");
    assert!(
        (cost - (600.0 * 3.0 + 200.0 * 0.3 + 40.0 * 15.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    let lines: Vec<&str> = log.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("tool: Glob")),
        "{lines:#?}"
    );
    spine.assert_no_unexpected_calls();
}

/// `--max-turns` is not in Claude Code's `--help`; this proves the flag is honoured.
#[tokio::test]
async fn a_claude_job_stops_at_the_profiles_max_turns() {
    let model = ModelServer::agent(vec![
        Step::Tool {
            name: "Glob".into(),
            input: json!({"pattern": "*.md"}),
        },
        Step::Text("never reached".into()),
    ])
    .await;
    let trigger = (
        "answer.yml",
        "on:\n  issues:\n    types: [opened]\nagent: short\nprompt: Look.\n",
    );
    let (spine, job, _) = one_job(
        trigger,
        format!(
            "  short: {{claude: {{base_url: \"{}\", api_key_env: TEST_CLAUDE_KEY, bearer: true}}, max_turns: 1, timeout: 120s}}\n",
            model.url
        ),
        "",
        &[
            ("PATH", &path_with_agent_clis()),
            ("TEST_CLAUDE_KEY", "sk-ant-test"),
        ],
        "issues",
        "issues/opened.json",
    )
    .await;
    let jobs = [job];
    assert_eq!(jobs[0].state, JobState::Failed);
    assert_eq!(
        jobs[0].error.as_deref(),
        Some("running the agent: Claude Code reached the profile's max_turns"),
    );
    // What it spent is kept even when it failed; the limit kept it from asking the model again.
    assert!(jobs[0].usage.as_ref().and_then(|u| u.turns).is_some());
    let asked = model
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .count();
    assert_eq!(asked, 1, "the second turn never happened");
    // `bearer: true`: the key went out as a Bearer token (for gateways), not as x-api-key.
    let request = &model.requests()[0];
    assert_eq!(request.header("authorization"), Some("Bearer sk-ant-test"));
    assert_eq!(request.header("x-api-key"), None);
    // The issue is told, with the reason.
    let comments = spine.wait_for_comments(1).await;
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0]
            .body
            .starts_with("This job failed: Claude Code reached the profile's max_turns."),
        "{}",
        comments[0].body
    );
}

#[tokio::test]
async fn a_model_endpoint_retries_rate_limits_and_server_errors_then_comments() {
    let model = ModelServer::chat(vec![
        ChatReply::Status(429, Some(0)),
        ChatReply::Status(503, None),
        ChatReply::Answer("The model's summary.".into(), 120, 30),
    ])
    .await;
    let trigger = (
        "summary.yml",
        "on:\n  issues:\n    types: [opened]\nagent: summarizer\nskills: auto\nprompt: Summarize issue {{ event.issue.number }}.\n",
    );
    let (spine, job, log) = one_job(
        trigger,
        format!(
            "  summarizer: {{openai: {{model: local-model, base_url: \"{}/v1\", api_key_env: TEST_LLM_KEY, system: Be brief.}}, max_tokens: 256, timeout: 60s}}\n",
            model.url
        ),
        "",
        &[("TEST_LLM_KEY", "sk-llm")],
        "issues",
        "issues/opened.json",
    )
    .await;
    let jobs = [job];
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?}\n{log:#?}",
        jobs[0].error
    );
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    assert!(comments[0].body.contains("The model's summary."));

    let requests = model.requests();
    assert_eq!(requests.len(), 3, "429, 503, then the answer");
    assert_eq!(requests[2].header("authorization"), Some("Bearer sk-llm"));
    let body = &requests[2].body;
    assert_eq!(body["model"], "local-model");
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["messages"][0]["content"], "Be brief.");
    // No tools: the skills come in the prompt, index and bodies, with the repository's instructions.
    let prompt = body["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("- **house-style**: The okapi house style"));
    assert!(prompt.contains("Write like an okapi."));
    assert!(prompt.contains("Check the stripes."));
    assert!(prompt.contains("Always mention the giraffe rule."));
    assert!(prompt.contains("Summarize issue 1."));

    let usage = jobs[0].usage.clone().expect("usage recorded");
    assert_eq!(
        (usage.turns, usage.input_tokens, usage.output_tokens),
        (Some(1), Some(120), Some(30))
    );
    let lines: Vec<&str> = log.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("request 1 failed (HTTP 429")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("request 2 failed (HTTP 503")),
        "{lines:#?}"
    );

    // Operators see what it spent: `nightshift jobs` lists it, `nightshift jobs ID --json` has it all.
    let jobs_cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
            .arg("--config")
            .arg(&spine.config)
            .args(args)
            .env_remove("NIGHTSHIFT_STORE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = jobs_cli(&["jobs"]);
    let row = table.lines().nth(1).expect("one job listed");
    assert!(
        row.contains("succeeded") && row.contains("summary"),
        "{table}"
    );
    assert!(
        row.ends_with("local-model, 1 turn, 120 input tokens, 30 output tokens"),
        "{table}"
    );
    let one: serde_json::Value = serde_json::from_str(&jobs_cli(&["jobs", "1", "--json"])).unwrap();
    assert_eq!(one["state"], "succeeded");
    assert_eq!(one["usage"]["input_tokens"], 120);
    assert!(
        one["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"].as_str().unwrap().contains("spent: local-model")),
        "{one:#}"
    );
}

#[tokio::test]
async fn a_model_endpoint_that_refuses_the_request_fails_the_job_at_once() {
    let model = ModelServer::chat(vec![ChatReply::Status(400, None)]).await;
    let trigger = (
        "summary.yml",
        "on:\n  issues:\n    types: [opened]\nagent: summarizer\nprompt: Summarize.\n",
    );
    let (spine, job, _) = one_job(
        trigger,
        format!(
            "  summarizer: {{openai: {{model: m, base_url: \"{}/v1\"}}}}\n",
            model.url
        ),
        "",
        &[],
        "issues",
        "issues/opened.json",
    )
    .await;
    let jobs = [job];
    assert_eq!(jobs[0].state, JobState::Failed);
    let error = jobs[0].error.clone().unwrap();
    assert!(
        error
            .contains("the model endpoint refused the request: HTTP 400 Bad Request: scripted 400"),
        "{error}"
    );
    assert_eq!(model.requests().len(), 1, "a 400 is not retried");
    assert_eq!(
        model.requests()[0].header("authorization"),
        None,
        "no api_key_env: no Authorization header (local servers)"
    );
    // The issue is told, with the reason.
    let comments = spine.wait_for_comments(1).await;
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0]
            .body
            .starts_with("This job failed: the agent failed.")
            && !comments[0].body.contains("scripted 400"),
        "{}",
        comments[0].body
    );
}

/// Verification with the real Codex CLI: its first round leaves a failing step; the follow-up resumes the
/// same Codex session (the same `session-id`, a cold resume of the saved history) and carries the step's
/// output; the second round fixes it and the pull request opens once, with the evidence.
#[tokio::test]
async fn a_codex_job_whose_verify_step_fails_is_resumed_with_the_failure_and_fixes_it() {
    let model = ModelServer::agent(vec![
        Step::Patch("*** Begin Patch\n*** Add File: answer.txt\n+41\n*** End Patch\n".into()),
        Step::Text("Wrote the answer.".into()),
        Step::Patch(
            "*** Begin Patch\n*** Update File: answer.txt\n@@\n-41\n+42\n*** End Patch\n".into(),
        ),
        Step::Text("Fixed the answer: 42.".into()),
    ])
    .await;
    let trigger = (
        "fix.yml",
        "on:\n  issues:\n    types: [labeled]\nagent: fixer\nprompt: Write the answer.\noutput: pull_request\n\
         verify:\n  - name: answer\n    run: 'a=$(cat answer.txt); [ \"$a\" = 42 ] || { echo \"expected 42, got $a\"; exit 1; }'\n",
    );
    let (spine, job, log) = one_job(
        trigger,
        format!(
            "  fixer: {{codex: {{model: gpt-5.5, base_url: \"{}/v1\", api_key_env: TEST_CODEX_KEY}}, timeout: 120s}}\n",
            model.url
        ),
        "",
        &[
            ("PATH", &path_with_agent_clis()),
            ("TEST_CODEX_KEY", "sk-test-codex"),
        ],
        "issues",
        "issues/labeled.json",
    )
    .await;
    let requests = model.requests();
    assert_eq!(job.state, JobState::Succeeded, "{:?}\n{log:#?}", job.error);
    // At least two turns in each round. (How many requests the CLI sends for them is its own business: on
    // a loaded machine it sends a slow one again, and not always byte for byte.)
    let bodies: Vec<String> = requests.iter().map(|r| r.body.to_string()).collect();
    assert!(
        bodies.len() >= 4,
        "two turns in each round: {:#?}",
        bodies
            .iter()
            .map(|b| b.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
    );
    // Round 2 resumed round 1's session (its first request carries round 1's conversation: a fresh
    // session would not) and was told what failed.
    let resumed = bodies
        .iter()
        .find(|b| b.contains("expected 42, got 41"))
        .expect("a request of round 2 carries the step's failure")
        .clone();
    assert!(resumed.contains("expected 42, got 41"), "{resumed}");
    assert!(
        resumed.contains("Wrote the answer."),
        "the first round's history is there"
    );
    assert!(resumed.contains("*** Add File: answer.txt"), "{resumed}");
    // Verified work, once, with the evidence.
    let pulls = spine.github.pulls();
    assert_eq!(pulls.len(), 1);
    assert!(pulls[0].body.contains("`answer`"), "{}", pulls[0].body);
    let branch = &pulls[0].head;
    assert_eq!(
        git(&spine.remote, &["show", &format!("{branch}:answer.txt")]),
        "42"
    );
    spine.assert_no_unexpected_calls();
}
