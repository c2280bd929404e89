//! The fake GitHub's own tests: it refuses what GitHub refuses, keeps what GitHub keeps, paginates as GitHub
//! does and injects the faults the delivery tests rely on.

mod common;

use std::time::Duration;

use common::fake_github::{Fault, TOKEN_LOGIN, diff_lines};
use common::{ExpectedAuth, FakeGitHub};
use serde_json::{Value, json};

const REPO: &str = "octo/app";
const TOKEN: &str = "ghp_fake_test";

#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

async fn fake() -> FakeGitHub {
    nightshift::install_tls_provider();
    FakeGitHub::start(ExpectedAuth::Token(TOKEN.into())).await
}

/// A fake in App mode, with an installation token minted (which [`try_call`] then presents): what writing
/// check runs needs (GitHub refuses a personal token there).
async fn app_fake() -> FakeGitHub {
    nightshift::install_tls_provider();
    let fake = FakeGitHub::start(ExpectedAuth::App { app_id: 1 }).await;
    let jwt = format!("e30.{}.sig", base64_url(r#"{"iss":"1"}"#));
    let minted = reqwest::Client::new()
        .post(format!("{}/app/installations/5/access_tokens", fake.url))
        .header("authorization", format!("Bearer {jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 201);
    assert_eq!(fake.installation_tokens().len(), 1);
    fake
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

async fn try_call(
    fake: &FakeGitHub,
    client: &reqwest::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> reqwest::Result<Answer> {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{}{path}", fake.url)
    };
    let mut request = client
        .request(method.parse().unwrap(), url)
        .header("authorization", format!("token {}", token_of(fake)))
        .header("accept", "application/vnd.github+json");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok(Answer {
        status,
        body,
        headers,
    })
}

/// What a call presents: the fake's last installation token (App mode), or the personal token.
fn token_of(fake: &FakeGitHub) -> String {
    fake.installation_tokens()
        .pop()
        .unwrap_or_else(|| TOKEN.to_owned())
}

async fn call(fake: &FakeGitHub, method: &str, path: &str, body: Option<Value>) -> Answer {
    try_call(fake, &client(), method, path, body).await.unwrap()
}

fn repo_path(rest: &str) -> String {
    format!("/repos/{REPO}{rest}")
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A patch of src/lib.rs: old lines 10-13 are new lines 10-14 (line 12 replaced by two).
const PATCH: &str =
    "@@ -10,4 +10,5 @@ fn main() {\n context10\n context11\n-old12\n+new12\n+new13\n context13";

#[tokio::test]
async fn a_body_github_would_refuse_is_422_and_recorded_unexpected() {
    let fake = app_fake().await;
    let issue = fake.add_issue_by(REPO, "alice", "Bug", "It breaks", &[]);
    let comment = fake.add_comment_by(REPO, issue, "alice", "/fix");
    let run = call(
        &fake,
        "POST",
        &repo_path("/check-runs"),
        Some(json!({ "name": "nightshift", "head_sha": SHA, "status": "in_progress" })),
    )
    .await;
    assert_eq!(run.status, 201);
    let run_id = run.body["id"].as_u64().unwrap();
    let annotation = json!({ "path": "a.rs", "start_line": 1, "end_line": 1, "annotation_level": "warning", "message": "m" });
    let refused: Vec<(&str, String, Value, &str)> = vec![
        // required
        (
            "POST",
            repo_path(&format!("/issues/{issue}/comments")),
            json!({ "text": "hi" }),
            "required",
        ),
        // type
        (
            "POST",
            repo_path(&format!("/issues/{issue}/comments")),
            json!({ "body": 5 }),
            "type",
        ),
        // enum
        (
            "POST",
            repo_path("/check-runs"),
            json!({ "name": "n", "head_sha": SHA, "status": "done" }),
            "enum",
        ),
        (
            "POST",
            repo_path(&format!("/issues/comments/{comment}/reactions")),
            json!({ "content": "+2" }),
            "enum",
        ),
        (
            "POST",
            repo_path(&format!("/pulls/{issue}/reviews")),
            json!({ "event": "LGTM", "body": "x" }),
            "enum",
        ),
        // maxItems: 50 annotations a request
        (
            "PATCH",
            repo_path(&format!("/check-runs/{run_id}")),
            json!({ "output": { "summary": "s", "annotations": vec![annotation.clone(); 51] } }),
            "maxItems",
        ),
        // anyOf: a completed check run needs a conclusion
        (
            "PATCH",
            repo_path(&format!("/check-runs/{run_id}")),
            json!({ "status": "completed" }),
            "anyOf",
        ),
        // required inside an item: an annotation without its message
        (
            "PATCH",
            repo_path(&format!("/check-runs/{run_id}")),
            json!({ "output": { "summary": "s", "annotations": [{ "path": "a.rs", "start_line": 1, "end_line": 1, "annotation_level": "warning" }] } }),
            "nested required",
        ),
        // minItems of add-labels' labels
        (
            "POST",
            repo_path(&format!("/issues/{issue}/labels")),
            json!({ "labels": [] }),
            "minItems",
        ),
        (
            "PATCH",
            repo_path(&format!("/issues/{issue}")),
            json!({ "state": "resolved" }),
            "enum",
        ),
        (
            "POST",
            repo_path("/pulls"),
            json!({ "title": "t", "head": "b" }),
            "required base",
        ),
    ];
    for (n, (method, path, body, rule)) in refused.into_iter().enumerate() {
        let answer = call(&fake, method, &path, Some(body.clone())).await;
        assert_eq!(
            answer.status, 422,
            "{rule}: {method} {path} {body} → {}",
            answer.body
        );
        assert_eq!(
            fake.unexpected().len(),
            n + 1,
            "{rule} is recorded: {:#?}",
            fake.unexpected()
        );
    }
    // A query GitHub refuses: an unknown state.
    let answer = call(&fake, "GET", &repo_path("/pulls?state=merged"), None).await;
    assert_eq!(answer.status, 422);
    let answer = call(&fake, "GET", &repo_path("/issues?per_page=many"), None).await;
    assert_eq!(answer.status, 422);
    assert_eq!(fake.unexpected().len(), 13);
    // Nothing refused was applied.
    assert!(fake.comments().iter().all(|c| c.body == "/fix"));
    assert!(fake.reactions().is_empty());
    assert_eq!(fake.check_runs()[0].history.len(), 1);
    assert_eq!(fake.issues()[0].state, "open");
    assert!(fake.pulls().is_empty());

    // What GitHub accepts passes: a completed run with its conclusion and 50 annotations, nullable fields.
    let done = call(
        &fake,
        "PATCH",
        &repo_path(&format!("/check-runs/{run_id}")),
        Some(json!({ "status": "completed", "conclusion": "failure",
                     "output": { "title": "t", "summary": "s", "annotations": vec![annotation; 50] } })),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["conclusion"], "failure");
    let update = call(
        &fake,
        "PATCH",
        &repo_path(&format!("/issues/{issue}")),
        Some(json!({ "milestone": null, "state": "closed" })),
    )
    .await;
    assert_eq!(update.status, 200, "{}", update.body);
    assert_eq!(fake.unexpected().len(), 13);
}

#[tokio::test]
async fn unknown_endpoints_and_bad_credentials_are_unexpected() {
    let fake = fake().await;
    let answer = call(&fake, "DELETE", &repo_path("/issues/comments/1"), None).await;
    assert_eq!(answer.status, 404);
    let answer = client()
        .get(format!("{}/repos/{REPO}", fake.url))
        .header("authorization", "token stolen")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(fake.unexpected().len(), 2, "{:#?}", fake.unexpected());
}

#[tokio::test]
async fn pagination_walks_every_page_by_the_link_header() {
    let fake = fake().await;
    let issue = fake.add_issue_by(REPO, "alice", "Busy", "", &[]);
    let ids: Vec<u64> = (0..75)
        .map(|n| fake.add_comment_by(REPO, issue, "bob", &format!("comment {n}")))
        .collect();
    // Default 30 a page; `next` and `last` on the fake's own address.
    let first = call(
        &fake,
        "GET",
        &repo_path(&format!("/issues/{issue}/comments")),
        None,
    )
    .await;
    assert_eq!(first.body.as_array().unwrap().len(), 30);
    let link = first.headers["link"].to_str().unwrap().to_owned();
    assert!(
        link.contains(&format!(
            "<{}/repos/{REPO}/issues/{issue}/comments?per_page=30&page=2>; rel=\"next\"",
            fake.url
        )),
        "{link}"
    );
    assert!(link.contains("page=3>; rel=\"last\""), "{link}");
    // Walk with per_page=20 by `next` until there is none.
    let mut seen = vec![];
    let mut next = Some(repo_path(&format!("/issues/{issue}/comments?per_page=20")));
    let mut pages = 0;
    while let Some(url) = next {
        let page = call(&fake, "GET", &url, None).await;
        assert_eq!(page.status, 200);
        pages += 1;
        seen.extend(
            page.body
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_u64().unwrap()),
        );
        next = page.headers.get("link").and_then(|l| {
            l.to_str()
                .unwrap()
                .split(", ")
                .find(|p| p.ends_with("rel=\"next\""))
                .map(|p| {
                    p.split(';')
                        .next()
                        .unwrap()
                        .trim_matches(['<', '>'])
                        .to_owned()
                })
        });
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, ids, "every comment once, oldest first");
    // At most 100 a page; past the end is an empty page.
    let big = call(
        &fake,
        "GET",
        &repo_path(&format!("/issues/{issue}/comments?per_page=500")),
        None,
    )
    .await;
    assert_eq!(big.body.as_array().unwrap().len(), 75);
    assert!(big.headers.get("link").is_none());
    let beyond = call(
        &fake,
        "GET",
        &repo_path(&format!("/issues/{issue}/comments?page=9")),
        None,
    )
    .await;
    assert_eq!(beyond.body, json!([]));
}

#[tokio::test]
async fn issues_and_pull_requests_share_numbers_and_the_issue_list() {
    let fake = fake().await;
    let bug = fake.add_issue_by(REPO, "alice", "Bug", "", &["bug"]);
    let pull = fake.add_pull(REPO, "bob", "feature", SHA, "main");
    let ours = call(
        &fake,
        "POST",
        &repo_path("/issues"),
        Some(json!({ "title": "Nightly audit", "labels": ["audit", "bug"] })),
    )
    .await;
    assert_eq!(ours.status, 201);
    assert_eq!(
        (bug, pull, ours.body["number"].as_u64().unwrap()),
        (1, 2, 3)
    );
    assert_eq!(ours.body["user"]["login"], TOKEN_LOGIN);

    let all = call(&fake, "GET", &repo_path("/issues"), None).await;
    let numbers: Vec<u64> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1], "newest first, the pull request too");
    assert!(all.body[1].get("pull_request").is_some());
    assert!(all.body[0].get("pull_request").is_none());
    let mine = call(
        &fake,
        "GET",
        &repo_path(&format!("/issues?creator={TOKEN_LOGIN}&labels=audit,bug")),
        None,
    )
    .await;
    assert_eq!(mine.body.as_array().unwrap().len(), 1);
    let bugs = call(&fake, "GET", &repo_path("/issues?labels=bug"), None).await;
    assert_eq!(bugs.body.as_array().unwrap().len(), 2);
    call(
        &fake,
        "PATCH",
        &repo_path("/issues/3"),
        Some(json!({ "state": "closed" })),
    )
    .await;
    let open = call(&fake, "GET", &repo_path("/issues?labels=audit"), None).await;
    assert_eq!(
        open.body,
        json!([]),
        "closed issues are not listed by default"
    );
    let closed = call(
        &fake,
        "GET",
        &repo_path("/issues?labels=audit&state=closed"),
        None,
    )
    .await;
    assert_eq!(closed.body.as_array().unwrap().len(), 1);
    // A comment on a pull request is a comment on its issue; on a missing one, 404.
    assert_eq!(
        call(
            &fake,
            "POST",
            &repo_path("/issues/2/comments"),
            Some(json!({ "body": "hi" }))
        )
        .await
        .status,
        201
    );
    assert_eq!(
        call(
            &fake,
            "POST",
            &repo_path("/issues/9/comments"),
            Some(json!({ "body": "hi" }))
        )
        .await
        .status,
        404
    );
    assert_eq!(fake.refusals().len(), 1);
    assert!(fake.unexpected().is_empty(), "{:#?}", fake.unexpected());
}

#[tokio::test]
async fn comments_keep_their_edits_and_reactions_are_created_once() {
    let fake = fake().await;
    let issue = fake.add_issue_by(REPO, "alice", "Bug", "", &[]);
    let posted = call(
        &fake,
        "POST",
        &repo_path(&format!("/issues/{issue}/comments")),
        Some(json!({ "body": "Working on it" })),
    )
    .await;
    let id = posted.body["id"].as_u64().unwrap();
    let edited = call(
        &fake,
        "PATCH",
        &repo_path(&format!("/issues/comments/{id}")),
        Some(json!({ "body": "Done" })),
    )
    .await;
    assert_eq!(edited.status, 200);
    let got = call(
        &fake,
        "GET",
        &repo_path(&format!("/issues/comments/{id}")),
        None,
    )
    .await;
    assert_eq!(got.body["body"], "Done");
    let comment = &fake.comments()[0];
    assert_eq!(comment.edits.len(), 1);
    assert_eq!(comment.edits[0].before, "Working on it");
    assert_eq!(
        call(
            &fake,
            "PATCH",
            &repo_path("/issues/comments/999"),
            Some(json!({ "body": "x" }))
        )
        .await
        .status,
        404
    );

    let path = repo_path(&format!("/issues/comments/{id}/reactions"));
    assert_eq!(
        call(&fake, "POST", &path, Some(json!({ "content": "eyes" })))
            .await
            .status,
        201
    );
    assert_eq!(
        call(&fake, "POST", &path, Some(json!({ "content": "eyes" })))
            .await
            .status,
        200
    );
    assert_eq!(
        call(&fake, "POST", &path, Some(json!({ "content": "rocket" })))
            .await
            .status,
        201
    );
    assert_eq!(fake.reactions().len(), 2);
}

#[tokio::test]
async fn a_second_pull_request_from_the_same_head_is_422() {
    let fake = fake().await;
    let body = json!({ "title": "Fix", "head": "nightshift/job-1", "base": "main", "body": "Closes #1", "draft": true });
    let first = call(&fake, "POST", &repo_path("/pulls"), Some(body.clone())).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body["draft"], true);
    let second = call(&fake, "POST", &repo_path("/pulls"), Some(body.clone())).await;
    assert_eq!(second.status, 422);
    assert_eq!(
        second.body["errors"][0]["message"],
        "A pull request already exists for octo:nightshift/job-1."
    );
    // Also with the owner spelled out.
    let mut owned = body.clone();
    owned["head"] = json!("octo:nightshift/job-1");
    assert_eq!(
        call(&fake, "POST", &repo_path("/pulls"), Some(owned))
            .await
            .status,
        422
    );
    assert_eq!(fake.pulls().len(), 1);
    assert_eq!(fake.all_pulls().len(), 1);
    // Found by head; once closed, a new one may be opened.
    let found = call(
        &fake,
        "GET",
        &repo_path("/pulls?head=octo:nightshift/job-1&state=all"),
        None,
    )
    .await;
    assert_eq!(found.body.as_array().unwrap().len(), 1);
    let number = first.body["number"].as_u64().unwrap();
    assert_eq!(
        call(
            &fake,
            "PATCH",
            &repo_path(&format!("/pulls/{number}")),
            Some(json!({ "state": "closed" }))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(&fake, "POST", &repo_path("/pulls"), Some(body))
            .await
            .status,
        201
    );
    assert_eq!(fake.refusals().len(), 2);
}

#[tokio::test]
async fn a_review_must_be_on_the_head_commit_and_on_lines_of_the_diff() {
    let fake = fake().await;
    let pull = fake.add_pull(REPO, "alice", "feature", SHA, "main");
    fake.set_pull_patches(REPO, pull, &[("src/lib.rs", PATCH)]);
    let reviews = repo_path(&format!("/pulls/{pull}/reviews"));
    let inline = |line: u64, side: &str| {
        json!({ "commit_id": SHA, "event": "COMMENT", "body": "b",
        "comments": [{ "path": "src/lib.rs", "line": line, "side": side, "body": "here" }] })
    };

    let stale = call(
        &fake,
        "POST",
        &reviews,
        Some(json!({ "commit_id": "f".repeat(40), "event": "COMMENT", "body": "b" })),
    )
    .await;
    assert_eq!(stale.status, 422, "a review of another commit");
    for (line, side) in [(9, "RIGHT"), (15, "RIGHT"), (14, "LEFT"), (12, "RIGHT")] {
        // 12 RIGHT is new12 (added): in the diff. Keep it for the accepted set below.
        if (line, side) == (12, "RIGHT") {
            continue;
        }
        let answer = call(&fake, "POST", &reviews, Some(inline(line, side))).await;
        assert_eq!(answer.status, 422, "line {line} {side} is outside the diff");
    }
    let elsewhere = call(
        &fake,
        "POST",
        &reviews,
        Some(json!({ "event": "COMMENT", "body": "b",
        "comments": [{ "path": "README.md", "line": 1, "body": "x" }] })),
    )
    .await;
    assert_eq!(
        elsewhere.status, 422,
        "a file the pull request does not change"
    );
    assert!(fake.reviews().is_empty());

    for (line, side) in [
        (12, "RIGHT"),
        (14, "RIGHT"),
        (10, "RIGHT"),
        (12, "LEFT"),
        (13, "LEFT"),
    ] {
        let answer = call(&fake, "POST", &reviews, Some(inline(line, side))).await;
        assert_eq!(answer.status, 200, "line {line} {side}: {}", answer.body);
        assert_eq!(answer.body["commit_id"], SHA);
        assert_eq!(answer.body["state"], "COMMENTED");
    }
    let listed = call(&fake, "GET", &reviews, None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 5);
    // The summary can be edited (PUT), and the review is found again by its id.
    let id = listed.body[0]["id"].as_u64().unwrap();
    let edited = call(
        &fake,
        "PUT",
        &format!("{reviews}/{id}"),
        Some(json!({ "body": "new summary" })),
    )
    .await;
    assert_eq!(edited.status, 200);
    assert_eq!(fake.reviews()[0].body, "new summary");

    // Someone pushes: the old head is refused. A closed pull request cannot be reviewed.
    fake.update_pull(REPO, pull, |p| p.head_sha = "a".repeat(40));
    assert_eq!(
        call(&fake, "POST", &reviews, Some(inline(12, "RIGHT")))
            .await
            .status,
        422
    );
    fake.update_pull(REPO, pull, |p| p.state = "closed".into());
    let closed = call(
        &fake,
        "POST",
        &reviews,
        Some(json!({ "event": "COMMENT", "body": "late" })),
    )
    .await;
    assert_eq!(closed.status, 422);
    assert_eq!(
        call(
            &fake,
            "POST",
            &repo_path("/pulls/77/reviews"),
            Some(json!({ "event": "COMMENT", "body": "x" }))
        )
        .await
        .status,
        404
    );
    assert!(fake.unexpected().is_empty(), "{:#?}", fake.unexpected());
}

#[tokio::test]
async fn the_diff_lines_of_a_patch_are_what_github_lets_comments_on() {
    let lines = diff_lines(PATCH);
    assert_eq!(
        lines.right.iter().copied().collect::<Vec<_>>(),
        [10, 11, 12, 13, 14]
    );
    assert_eq!(
        lines.left.iter().copied().collect::<Vec<_>>(),
        [10, 11, 12, 13]
    );
    assert_eq!(lines.positions, 6);
    let two = diff_lines(
        "@@ -1,2 +1,2 @@\n-a\n+b\n c\n@@ -40 +40,2 @@\n x\n+y\n\\ No newline at end of file",
    );
    assert!(two.right.contains(&41) && two.right.contains(&1) && !two.right.contains(&3));
    assert!(diff_lines("not a diff").right.is_empty());
}

#[tokio::test]
async fn a_check_run_written_with_a_personal_token_is_refused_as_github_refuses_it() {
    let fake = fake().await;
    let created = call(
        &fake,
        "POST",
        &repo_path("/check-runs"),
        Some(json!({ "name": "nightshift", "head_sha": SHA, "status": "in_progress" })),
    )
    .await;
    assert_eq!(created.status, 403);
    assert_eq!(
        created.body["message"],
        "You must authenticate via a GitHub App."
    );
    assert_eq!(
        created.body["documentation_url"],
        "https://docs.github.com/rest/checks/runs#create-a-check-run"
    );
    // Refused before the body is looked at: a body GitHub would also refuse gets the same answer.
    let bad_body = call(
        &fake,
        "POST",
        &repo_path("/check-runs"),
        Some(json!({ "name": 5 })),
    )
    .await;
    assert_eq!(bad_body.status, 403);
    let update = call(
        &fake,
        "PATCH",
        &repo_path("/check-runs/1"),
        Some(json!({ "status": "completed", "conclusion": "success" })),
    )
    .await;
    assert_eq!(update.status, 403);
    assert!(fake.check_runs().is_empty());
    let unexpected = fake.unexpected();
    assert_eq!(unexpected.len(), 3, "{unexpected:#?}");
    assert!(
        unexpected
            .iter()
            .all(|u| format!("{u:?}").contains("personal token")),
        "{unexpected:#?}"
    );
}

#[tokio::test]
async fn check_runs_keep_each_update_and_are_listed_by_ref() {
    let fake = app_fake().await;
    let created = call(&fake, "POST", &repo_path("/check-runs"),
        Some(json!({ "name": "nightshift", "head_sha": SHA, "status": "in_progress", "external_id": "job-7" }))).await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_u64().unwrap();
    let a = json!({ "path": "a.rs", "start_line": 1, "end_line": 1, "annotation_level": "failure", "message": "m" });
    call(
        &fake,
        "PATCH",
        &repo_path(&format!("/check-runs/{id}")),
        Some(json!({ "output": { "summary": "1", "annotations": [a] } })),
    )
    .await;
    call(
        &fake,
        "PATCH",
        &repo_path(&format!("/check-runs/{id}")),
        Some(json!({ "conclusion": "failure", "output": { "summary": "2", "annotations": [a] } })),
    )
    .await;
    let run = &fake.check_runs()[0];
    assert_eq!(
        (run.status.as_str(), run.conclusion.as_deref()),
        ("completed", Some("failure"))
    );
    assert_eq!(
        run.annotations.len(),
        2,
        "annotations add up across updates"
    );
    assert_eq!(run.history.len(), 3);
    let listed = call(
        &fake,
        "GET",
        &repo_path(&format!("/commits/{SHA}/check-runs?check_name=nightshift")),
        None,
    )
    .await;
    assert_eq!(listed.body["total_count"], 1);
    assert_eq!(listed.body["check_runs"][0]["external_id"], "job-7");
    let bad = call(
        &fake,
        "POST",
        &repo_path("/check-runs"),
        Some(json!({ "name": "n", "head_sha": "main" })),
    )
    .await;
    assert_eq!(bad.status, 422, "a head_sha that is no commit");
}

#[tokio::test]
async fn objects_are_authored_by_the_app_bot_in_app_mode() {
    nightshift::install_tls_provider();
    let fake = FakeGitHub::start(ExpectedAuth::App { app_id: 1 }).await;
    fake.add_issue_by(REPO, "alice", "Bug", "", &[]);
    // An installation token needs the App's JWT (header.claims.signature, `iss` the app id).
    let claims = base64_url(r#"{"iss":"1"}"#);
    let jwt = format!("e30.{claims}.sig");
    let token = reqwest::Client::new()
        .post(format!("{}/app/installations/5/access_tokens", fake.url))
        .header("authorization", format!("Bearer {jwt}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let posted = reqwest::Client::new()
        .post(format!("{}/repos/{REPO}/issues/1/comments", fake.url))
        .header("authorization", format!("token {token}"))
        .json(&json!({ "body": "hello" }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(posted["user"]["login"], "nightshift-test[bot]");
    assert_eq!(posted["user"]["type"], "Bot");
    assert_eq!(fake.comments()[0].author, "nightshift-test[bot]");
    assert!(fake.unexpected().is_empty(), "{:#?}", fake.unexpected());
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn faults_before_the_write_apply_nothing_and_after_it_apply_it() {
    let fake = fake().await;
    let issue = fake.add_issue_by(REPO, "alice", "Bug", "", &[]);
    let path = repo_path(&format!("/issues/{issue}/comments"));
    fake.fail_next(
        "issues/create-comment",
        &[
            Fault::BadGatewayBefore,
            Fault::BadGatewayAfter,
            Fault::SecondaryRateLimit { retry_after: 7 },
            Fault::RateLimit {
                status: 429,
                reset_in: 60,
            },
            Fault::Status(500),
        ],
    );
    let answers: Vec<Answer> = futures_sequence(&fake, &path, 6).await;
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [502, 502, 403, 429, 500, 201]
    );
    assert_eq!(answers[2].headers["retry-after"], "7");
    assert!(
        answers[2].body["message"]
            .as_str()
            .unwrap()
            .starts_with("You have exceeded a secondary rate limit")
    );
    assert_eq!(answers[3].headers["x-ratelimit-remaining"], "0");
    let reset: u64 = answers[3].headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset > 1_700_000_000);
    // Applied: the 502-after one and the last one.
    assert_eq!(fake.comments().len(), 2);
    let writes = fake.writes();
    assert_eq!(
        writes.iter().map(|w| w.applied).collect::<Vec<_>>(),
        [false, true, false, false, false, true]
    );
    let counts = fake.fault_counts();
    assert_eq!(counts["502-before"], 1);
    assert_eq!(counts["502-after"], 1);
    assert_eq!(counts["secondary-rate-limit"], 1);
    assert_eq!(counts["rate-limit"], 1);
    // The old form still works: statuses.
    fake.fail_next("issues/create-comment", &[404]);
    assert_eq!(
        call(&fake, "POST", &path, Some(json!({ "body": "x" })))
            .await
            .status,
        404
    );
}

async fn futures_sequence(fake: &FakeGitHub, path: &str, n: usize) -> Vec<Answer> {
    let mut answers = vec![];
    for i in 0..n {
        answers.push(
            call(
                fake,
                "POST",
                path,
                Some(json!({ "body": format!("try {i}") })),
            )
            .await,
        );
    }
    answers
}

#[tokio::test]
async fn a_dropped_connection_is_an_error_for_the_client_but_the_write_is_applied() {
    let fake = fake().await;
    let issue = fake.add_issue_by(REPO, "alice", "Bug", "", &[]);
    fake.fail_next("issues/create-comment", &[Fault::DropAfter]);
    let result = try_call(
        &fake,
        &client(),
        "POST",
        &repo_path(&format!("/issues/{issue}/comments")),
        Some(json!({ "body": "once" })),
    )
    .await;
    assert!(result.is_err(), "no answer");
    assert_eq!(fake.comments().len(), 1, "but the comment exists");
    assert_eq!(fake.writes()[0].status, None);
    assert!(fake.writes()[0].applied);
}

#[tokio::test]
async fn a_hang_after_the_write_outlasts_the_client_timeout() {
    let fake = app_fake().await;
    fake.set_hang(Duration::from_secs(600));
    fake.fail_next("checks/create", &[Fault::HangAfter]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = try_call(
        &fake,
        &client,
        "POST",
        &repo_path("/check-runs"),
        Some(json!({ "name": "n", "head_sha": SHA })),
    )
    .await;
    assert!(result.unwrap_err().is_timeout());
    // The client gave up; the write was applied all the same (on a loaded machine the client may give up
    // before the fake got to it, so wait for it rather than assume).
    fake.wait_until(Duration::from_secs(30), "the check run", |f| {
        f.check_runs().len() == 1
    })
    .await;
    // (Besides minting the installation token.)
    let writes: Vec<_> = fake
        .writes()
        .into_iter()
        .filter(|w| w.operation == "checks/create")
        .collect();
    assert_eq!(writes.len(), 1);
    assert!(writes[0].applied);
    // The fake still answers other calls meanwhile.
    assert_eq!(
        call(
            &fake,
            "GET",
            &repo_path(&format!("/commits/{SHA}/check-runs")),
            None
        )
        .await
        .body["total_count"],
        1
    );
}

#[tokio::test]
async fn a_seeded_fault_rate_hits_writes_only_and_repeats_with_its_seed() {
    let kinds = [
        Fault::BadGatewayBefore,
        Fault::BadGatewayAfter,
        Fault::SecondaryRateLimit { retry_after: 1 },
        Fault::DropAfter,
    ];
    let mut runs = vec![];
    for _ in 0..2 {
        let fake = fake().await;
        let issue = fake.add_issue_by(REPO, "alice", "Bug", "", &[]);
        fake.set_fault_rate(0.3, 42, &kinds);
        let client = client();
        for i in 0..60 {
            let _ = try_call(
                &fake,
                &client,
                "POST",
                &repo_path(&format!("/issues/{issue}/comments")),
                Some(json!({ "body": format!("{i}") })),
            )
            .await;
            assert_eq!(
                try_call(
                    &fake,
                    &client,
                    "GET",
                    &repo_path(&format!("/issues/{issue}")),
                    None
                )
                .await
                .unwrap()
                .status,
                200,
                "reads are not faulted"
            );
        }
        let writes = fake.writes();
        assert_eq!(writes.len(), 60);
        let faulted = writes.iter().filter(|w| w.fault.is_some()).count();
        assert!((6..=30).contains(&faulted), "about 30 % of 60: {faulted}");
        let applied = writes.iter().filter(|w| w.applied).count();
        assert_eq!(
            fake.comments().len(),
            applied,
            "applied writes are exactly the comments there"
        );
        runs.push(writes.iter().map(|w| w.fault).collect::<Vec<_>>());
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
}

#[tokio::test]
async fn an_outage_answers_everything_503_until_it_ends() {
    let fake = fake().await;
    fake.outage(Duration::from_secs(3600));
    assert_eq!(call(&fake, "GET", &repo_path(""), None).await.status, 503);
    assert_eq!(
        call(
            &fake,
            "POST",
            &repo_path("/issues"),
            Some(json!({ "title": "x" }))
        )
        .await
        .status,
        503
    );
    assert!(fake.issues().is_empty());
    fake.end_outage();
    assert_eq!(call(&fake, "GET", &repo_path(""), None).await.status, 200);
    // A short one ends by itself.
    fake.outage(Duration::from_millis(200));
    let client = client();
    let mut statuses = vec![];
    loop {
        let status = try_call(&fake, &client, "GET", &repo_path(""), None)
            .await
            .unwrap()
            .status;
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert!(statuses.len() < 10_000, "the outage never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(statuses.iter().rev().skip(1).all(|s| *s == 503));
    assert!(fake.fault_counts()["outage"] >= 2);
}

#[tokio::test]
async fn a_webhook_payload_teaches_the_fake_its_pull_request() {
    let fake = fake().await;
    fake.learn(&json!({
        "repository": { "full_name": REPO },
        "installation": { "id": 9 },
        "pull_request": { "number": 12, "title": "From a fork", "body": null, "state": "open", "draft": false,
            "user": { "login": "mallory" },
            "head": { "ref": "main", "sha": SHA, "repo": { "full_name": "mallory/app" } },
            "base": { "ref": "main" } }
    }));
    let got = call(&fake, "GET", &repo_path("/pulls/12"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["head"]["repo"]["fork"], true);
    assert_eq!(got.body["head"]["label"], "mallory:main");
    assert_eq!(got.body["head"]["sha"], SHA);
    assert_eq!(got.body["user"]["login"], "mallory");
    // The next number is after it.
    let issue = call(
        &fake,
        "POST",
        &repo_path("/issues"),
        Some(json!({ "title": "t" })),
    )
    .await;
    assert_eq!(issue.body["number"], 13);
}

#[test]
fn the_fixture_describes_every_operation_the_fake_needs() {
    let extra: Value =
        serde_json::from_str(include_str!("fixtures/openapi/extra_operations.json")).unwrap();
    for op in [
        "issues/get-comment",
        "issues/update-comment",
        "issues/list-comments",
        "issues/create",
        "issues/update",
        "issues/get",
        "issues/list-for-repo",
        "reactions/create-for-issue-comment",
        "pulls/get",
        "pulls/list",
        "pulls/create",
        "pulls/update",
        "pulls/list-files",
        "pulls/list-reviews",
        "pulls/create-review",
        "pulls/update-review",
        "checks/create",
        "checks/update",
        "checks/list-for-ref",
        "issues/add-labels",
        "repos/get",
        "repos/get-collaborator-permission-level",
        "apps/get-authenticated",
        "apps/create-installation-access-token",
        "users/get-authenticated",
        "apps/get-repo-installation",
    ] {
        assert!(extra["operations"][op].is_object(), "{op}");
    }
    // No $ref is left: schemas are self-contained.
    assert!(!include_str!("fixtures/openapi/extra_operations.json").contains("\"$ref\""));
}

#[tokio::test]
async fn a_forks_branch_of_the_same_name_is_neither_found_nor_a_duplicate() {
    let fake = fake().await;
    // Mallory opens a pull request from her fork's branch named like nightshift's.
    let theirs = fake.add_pull(REPO, "mallory", "nightshift/job-1", SHA, "main");
    fake.update_pull(REPO, theirs, |p| p.head_repo = "mallory/app".into());
    let found = call(
        &fake,
        "GET",
        &repo_path("/pulls?head=octo:nightshift/job-1"),
        None,
    )
    .await;
    assert_eq!(found.body, json!([]), "not nightshift's branch");
    let by_fork = call(
        &fake,
        "GET",
        &repo_path("/pulls?head=mallory:nightshift/job-1"),
        None,
    )
    .await;
    assert_eq!(by_fork.body[0]["head"]["repo"]["fork"], true);
    let ours = call(
        &fake,
        "POST",
        &repo_path("/pulls"),
        Some(json!({ "title": "Fix", "head": "nightshift/job-1", "base": "main" })),
    )
    .await;
    assert_eq!(ours.status, 201, "{}", ours.body);
    assert_eq!(ours.body["user"]["login"], TOKEN_LOGIN);
    assert_eq!(ours.body["head"]["repo"]["fork"], false);
}

#[tokio::test]
async fn every_list_endpoint_is_paginated() {
    let fake = app_fake().await;
    let issue = fake.add_issue_by(REPO, "alice", "One", "", &["x"]);
    fake.add_issue_by(REPO, "alice", "Two", "", &["x"]);
    let pull = fake.add_pull(REPO, "alice", "a", SHA, "main");
    fake.add_pull(REPO, "alice", "b", SHA, "main");
    fake.set_pull_patches(REPO, pull, &[("a.rs", PATCH), ("b.rs", PATCH)]);
    let comment = fake.add_comment_by(REPO, issue, "alice", "/go");
    for content in ["eyes", "rocket"] {
        call(
            &fake,
            "POST",
            &repo_path(&format!("/issues/comments/{comment}/reactions")),
            Some(json!({ "content": content })),
        )
        .await;
    }
    for _ in 0..2 {
        call(
            &fake,
            "POST",
            &repo_path(&format!("/pulls/{pull}/reviews")),
            Some(json!({ "event": "COMMENT", "body": "b" })),
        )
        .await;
    }
    for name in ["one", "two"] {
        call(
            &fake,
            "POST",
            &repo_path("/check-runs"),
            Some(json!({ "name": name, "head_sha": SHA })),
        )
        .await;
    }
    let lists = [
        repo_path("/issues?labels=x"),
        repo_path("/pulls"),
        repo_path(&format!("/pulls/{pull}/files")),
        repo_path(&format!("/pulls/{pull}/reviews")),
        repo_path(&format!("/issues/comments/{comment}/reactions")),
        repo_path(&format!("/commits/{SHA}/check-runs")),
    ];
    for list in lists {
        let sep = if list.contains('?') { '&' } else { '?' };
        let first = call(&fake, "GET", &format!("{list}{sep}per_page=1"), None).await;
        assert_eq!(first.status, 200, "{list}");
        let items = first.body.get("check_runs").unwrap_or(&first.body);
        assert_eq!(items.as_array().unwrap().len(), 1, "{list}");
        let link = first
            .headers
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(link.contains("page=2>; rel=\"next\""), "{list}: {link}");
        assert!(link.contains(&fake.url), "{list}: {link}");
    }
    assert!(fake.unexpected().is_empty(), "{:#?}", fake.unexpected());
}
