//! Setting the GitHub App up in a browser: the real `nightshift serve` with no credentials, the fake GitHub's
//! "create App" pages, and (in the first test) a real headless Chromium clicking through them.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Auth, Spine, sign};
use nightshift::store::JobState;

const ISSUE_OPENED_COMMENT: (&str, &str) = (
    "triage.yml",
    "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: \"Triage #{{ event.issue.number }}\"\noutput: comment\n",
);

/// The one-time setup URL `serve` printed.
fn setup_url(spine: &Spine) -> String {
    let log = spine.server.as_ref().unwrap().log();
    log.lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.contains("/setup?token="))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("serve printed no setup URL:\n{log}"))
}

fn credentials_file(spine: &Spine) -> std::path::PathBuf {
    spine.dir.path().join("data/github-app.json")
}

async fn deliver_signed(spine: &Spine, secret: &str, delivery: &str) -> reqwest::StatusCode {
    let body = spine.payload("issues/opened.json");
    if let Ok(payload) = serde_json::from_slice(&body) {
        spine.github.learn(&payload);
    }
    spine
        .post(
            &body,
            &[
                ("X-GitHub-Event", "issues"),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &sign(secret, &body)),
            ],
        )
        .await
}

fn http() -> reqwest::Client {
    nightshift::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_app_is_set_up_in_a_real_browser_and_jobs_then_run_as_it() {
    let mut spine = Spine::new(Auth::Manifest, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    let url = setup_url(&spine);
    assert!(
        url.starts_with(&format!("{}/setup?token=", spine.url())),
        "{url}"
    );
    // Until the App exists, no webhook is accepted, however it is signed: 503 (not set up), not 401.
    assert_eq!(deliver_signed(&spine, "anything", "before").await, 503);

    let browser = browser::Browser::start().await;
    browser.client.goto(&url).await.unwrap();
    browser.wait_for("#create").await;
    browser.screenshot("setup-page").await;
    browser.click("#create").await;
    // The fake GitHub's "create App" page, with the manifest nightshift sent.
    let confirm = browser.wait_for("#create-github-app").await;
    assert!(confirm.contains("your account"), "{confirm}");
    browser.screenshot("setup-github-create-app").await;
    browser.click("#create-github-app").await;
    // GitHub sends the browser back; nightshift exchanges the code and runs as the App.
    let done = browser.wait_for("#done").await;
    assert!(done.contains("nightshift-test"), "{done}");
    assert!(browser.url().await.contains("/setup/callback?code="));
    browser.screenshot("setup-done").await;
    browser.close().await;

    let manifests = spine.github.manifests();
    assert_eq!(manifests.len(), 1);
    assert_eq!(
        manifests[0]["hook_attributes"]["url"],
        format!("{}/webhooks/github", spine.url())
    );
    assert_eq!(
        manifests[0]["redirect_url"],
        format!("{}/setup/callback", spine.url())
    );
    let app = spine.github.manifest_app().expect("the code was exchanged");

    // Stored 0600, with everything GitHub gave.
    let file = credentials_file(&spine);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{file:?} is {mode:o}");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["app_id"], app.id);
    assert_eq!(stored["webhook_secret"], app.webhook_secret.as_str());
    assert_eq!(stored["client_secret"], app.client_secret.as_str());
    assert!(
        stored["private_key_pem"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );

    // A delivery signed with the new secret is accepted and its job runs as the App: its token is minted
    // with a JWT signed by the new App's key (the fake checks the signature).
    assert_eq!(deliver_signed(&spine, "anything", "forged").await, 401);
    assert_eq!(
        deliver_signed(&spine, &app.webhook_secret, "after").await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert!(
        spine
            .github
            .mints()
            .iter()
            .any(|m| m.body.get("repositories").is_some()),
        "the job's token was minted as the new App"
    );
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].author, common::fake_github::APP_LOGIN);

    // The App's own sources start without a restart: its missed deliveries are looked for as the App.
    let mut looked = false;
    for _ in 0..300 {
        if spine
            .server
            .as_ref()
            .unwrap()
            .log()
            .contains("missed deliveries looked for")
        {
            looked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(looked, "{}", spine.server.as_ref().unwrap().log());

    // The setup routes are gone, token or not.
    let client = http();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 404);
    // Nothing secret reached the log.
    let log = spine.server.as_ref().unwrap().log();
    for secret in [&app.webhook_secret, &app.client_secret] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret was logged:\n{log}"
        );
    }
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    spine.assert_no_unexpected_calls();

    // A later start reads the stored App: no setup URL, webhooks verified with its secret.
    spine.kill();
    spine.start().await;
    let log = spine.server.as_ref().unwrap().log();
    assert!(!log.contains("/setup?token="), "{log}");
    assert!(
        log.contains("running as the GitHub App set up in the browser"),
        "{log}"
    );
    let token = url.split("token=").nth(1).unwrap();
    let again = format!("{}/setup?token={token}", spine.url());
    assert_eq!(client.get(&again).send().await.unwrap().status(), 404);
    assert_eq!(
        deliver_signed(&spine, &app.webhook_secret, "after-restart").await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:?}"
    );
    spine.assert_no_unexpected_calls();
}

/// The `name="…" value="…"` of a hidden input, HTML-unescaped.
fn hidden(page: &str, name: &str) -> String {
    let start = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no `{name}` in {page}"))
        + name.len()
        + 15;
    let end = start + page[start..].find('"').unwrap();
    page[start..end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test]
async fn setup_refuses_strangers_foreign_states_and_a_second_use_of_the_code() {
    let mut spine = Spine::new(Auth::Manifest, &[ISSUE_OPENED_COMMENT]).await;
    spine.start().await;
    let url = setup_url(&spine);
    let base = spine.url();
    let client = http();

    // Without the token, or with a wrong one, there is no setup page.
    for stranger in [
        format!("{base}/setup"),
        format!("{base}/setup?token="),
        format!("{base}/setup?token={}", "0".repeat(64)),
    ] {
        assert_eq!(client.get(&stranger).send().await.unwrap().status(), 404);
    }
    let response = client
        .post(format!("{base}/setup/organization"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=wrong&org=acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // With it: the page, not cached, no script, a session cookie.
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = response.text().await.unwrap();
    let action = {
        let start = page.find("action=\"").unwrap() + 8;
        page[start..start + page[start..].find('"').unwrap()].replace("&amp;", "&")
    };
    let state = action.split("state=").nth(1).unwrap().to_owned();
    let manifest = hidden(&page, "manifest");

    // The organization form leads to the organization's "create App" page, for the same session.
    let response = client
        .post(format!("{base}/setup/organization"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &session)
        .body(form_encode(&[
            ("token", url.split("token=").nth(1).unwrap()),
            ("org", "acme-org"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let org_page = response.text().await.unwrap();
    assert!(
        org_page.contains("/organizations/acme-org/settings/apps/new?state="),
        "{org_page}"
    );
    // A name that would change the URL is refused.
    let response = client
        .post(format!("{base}/setup/organization"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &session)
        .body(form_encode(&[
            ("token", url.split("token=").nth(1).unwrap()),
            ("org", "../../evil"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // The fake GitHub's pages, as the browser would post them: a code for our state.
    let response = client
        .post(&action)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_encode(&[("manifest", &manifest)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let pending = hidden(&response.text().await.unwrap(), "pending");
    let response = client
        .post(format!("{}/settings/apps/new/confirm", spine.github.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_encode(&[("pending", &pending)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let back = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{base}/setup/callback?code=")),
        "{back}"
    );
    assert!(back.ends_with(&format!("&state={state}")), "{back}");
    let code = back
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();

    // A state nightshift did not hand out, or ours from another browser (no session), is refused, and the
    // code is not exchanged.
    let callback = |state: &str| format!("{base}/setup/callback?code={code}&state={state}");
    let wrong = client
        .get(callback("f00d"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let elsewhere = client.get(callback(&state)).send().await.unwrap();
    assert_eq!(elsewhere.status(), 403);
    let other_session = client
        .get(callback(&state))
        .header("cookie", format!("nightshift_setup={}", "a".repeat(40)))
        .send()
        .await
        .unwrap();
    assert_eq!(other_session.status(), 403);
    assert!(spine.github.manifest_app().is_none());
    assert!(!credentials_file(&spine).exists());

    // The right state in the right session: the App is made.
    let done = client
        .get(callback(&state))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(spine.github.manifest_app().is_some());
    assert!(credentials_file(&spine).exists());

    // The code works once: GitHub refuses it again, and nightshift's setup is gone.
    let again = client
        .post(format!(
            "{}/app-manifests/{code}/conversions",
            spine.github.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let replay = client
        .get(callback(&state))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 404);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 404);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn the_fake_refuses_a_manifest_with_other_permissions() {
    let spine = Spine::new(Auth::Manifest, &[ISSUE_OPENED_COMMENT]).await;
    let mut manifest = nightshift::setup::manifest("http://127.0.0.1:9").unwrap();
    manifest["default_permissions"]["administration"] = "write".into();
    let response = http()
        .post(format!("{}/settings/apps/new?state=x", spine.github.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_encode(&[("manifest", &manifest.to_string())]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let unexpected = spine.github.unexpected();
    assert_eq!(unexpected.len(), 1, "{unexpected:?}");
    assert!(unexpected[0].contains("permissions"), "{unexpected:?}");
}
