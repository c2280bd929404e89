//! The dashboard: the real `nightshift serve`, the fake GitHub's "Sign in with GitHub", a real headless
//! Chromium (the first test), and plain HTTP for what a browser hides (cookies' flags, CSP, CSRF, streams).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Auth, Spine, append_config};
use nightshift::ids::JobId;
use nightshift::store::JobState;

/// A trigger whose agent prints (on stderr, which streams into the job log; stdout is its message) a hostile
/// first line, then one more line when the test asks
/// (`GATE/say`), then waits for `GATE/release`.
const TALK: (&str, &str) = (
    "talk.yml",
    "on:\n  issues:\n    types: [opened]\nagent: talker\nprompt: \"Triage </textarea><script>alert(1)</script> #{{ event.issue.number }}\"\noutput: comment\n",
);

const CLIENT_ID: &str = "Iv1.dashboardclient";
const CLIENT_SECRET: &str = "dashboard-client-secret";
const TOKEN: &str = "dashboard-static-token-0123456789";

/// The talking agent: a shell script in the test's folder.
fn talker(spine: &Spine) -> PathBuf {
    let script = spine.dir.path().join("talker.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         gate=$1\n\
         n=$(ls \"$gate\" | grep -c '^started' || true)\n\
         n=$((n + 1))\n\
         touch \"$gate/started-$n\"\n\
         printf 'first <script>alert(1)</script></textarea> \\033[31mred\\033[0m\\n' >&2\n\
         i=0\n\
         while [ ! -e \"$gate/say\" ] && [ ! -e \"$gate/release\" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done\n\
         echo 'second line, printed while the page was open' >&2\n\
         while [ ! -e \"$gate/release\" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done\n\
         echo done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

async fn spine_with(dashboard: &str) -> Spine {
    let spine = Spine::new(Auth::App, &[TALK]).await;
    let script = talker(&spine);
    spine.add_agents(&format!(
        "  talker: {{command: [{script}, {gate}], timeout: 120s, shared: {{writable: [{gate}]}}}}\n",
        script = script.display(),
        gate = spine.gate.display(),
    ));
    append_config(&spine, dashboard);
    spine
}

/// A form body.
fn form(pairs: &[(&str, &str)]) -> String {
    nightshift::web::auth::form_encode(pairs)
}

fn http() -> reqwest::Client {
    nightshift::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never happened");
}

async fn wait_for_job_state(spine: &mut Spine, job: i64, state: JobState) {
    for _ in 0..600 {
        if spine
            .jobs()
            .await
            .iter()
            .any(|j| j.id == JobId(job) && j.state == state)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "job {job} never became {state:?}: {:#?}",
        spine.jobs().await
    );
}

fn started(gate: &Path, n: usize) -> bool {
    gate.join(format!("started-{n}")).exists()
}

/// The text of the element `css` selects, now.
async fn text_of(browser: &browser::Browser, css: &str) -> String {
    browser
        .client
        .find(browser::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits until the element `css` selects says `needle`.
async fn wait_for_text(browser: &browser::Browser, css: &str, needle: &str) -> String {
    for _ in 0..300 {
        if let Ok(element) = browser.client.find(browser::Locator::Css(css)).await
            && let Ok(text) = element.text().await
            && text.contains(needle)
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "`{css}` never said `{needle}`: {}",
        browser.client.source().await.unwrap_or_default()
    );
}

/// Signs in with GitHub as whoever the fake's browser user is; the page it lands on.
async fn sign_in_with_github(browser: &browser::Browser, url: &str) {
    browser.client.goto(url).await.unwrap();
    browser.wait_for("#sign-in-github").await;
    browser.click("#sign-in-github").await;
    browser.wait_for("#authorize-github").await;
    browser.click("#authorize-github").await;
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser_signs_in_streams_cancels_and_reruns() {
    let mut spine = spine_with(&format!(
        "dashboard:\n  users: [octo-admin]\n  orgs: [octo-org]\n  admins: [Octo-Admin]\n  client_id: {CLIENT_ID}\n  client_secret: {CLIENT_SECRET}\n"
    ))
    .await;
    spine.start().await;
    let url = spine.url();
    spine
        .github
        .add_oauth_client(CLIENT_ID, CLIENT_SECRET, &format!("{url}/auth/callback"));
    spine.github.add_member("octo-org", "octo-reader", "active");
    spine
        .github
        .add_member("octo-org", "octo-invited", "pending");

    let browser = browser::Browser::start().await;
    // Signed out: the sign-in page, for the jobs and for a job.
    browser.client.goto(&format!("{url}/jobs/1")).await.unwrap();
    browser.wait_for("#sign-in-github").await;
    assert!(
        browser
            .client
            .find(browser::Locator::Css("#jobs"))
            .await
            .is_err()
    );

    // An admin signs in with GitHub and lands on the jobs table, which is empty.
    spine.github.sign_in_as("octo-admin");
    sign_in_with_github(&browser, &url).await;
    let who = browser.wait_for("#who").await;
    assert!(who.contains("octo-admin (admin)"), "{who}");
    assert!(text_of(&browser, "#jobs").await.contains("No jobs"));

    // A job appears while it runs, without a reload.
    spine
        .deliver_example("issues", "dash-1", "issues/opened.json")
        .await;
    let gate = spine.gate.clone();
    wait_for("the agent to start", || started(&gate, 1)).await;
    let row = wait_for_text(&browser, "#job-1", "running").await;
    assert!(
        row.contains("talk") && row.contains("Codertocat/Hello-World") && row.contains("talker"),
        "{row}"
    );
    browser.screenshot("dashboard-jobs").await;

    // Its page: the prompt and the log, hostile text shown as text; a line printed now streams in.
    browser.click("#job-1 a").await;
    let log = wait_for_text(&browser, "#log", "first").await;
    assert!(
        log.contains("<script>alert(1)</script></textarea>"),
        "{log}"
    );
    assert!(
        log.contains("\\u{1b}[31mred"),
        "the ANSI escape is shown, not obeyed: {log}"
    );
    let prompt = text_of(&browser, "#prompt").await;
    assert!(
        prompt.contains("</textarea><script>alert(1)</script> #"),
        "{prompt}"
    );
    let injected = browser
        .client
        .execute(
            "return document.querySelectorAll('main script, #log *:not(span)').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        serde_json::json!(0),
        "markup from the job reached the page"
    );
    std::fs::write(gate.join("say"), "").unwrap();
    wait_for_text(
        &browser,
        "#log",
        "second line, printed while the page was open",
    )
    .await;
    assert!(
        browser.url().await.ends_with("/jobs/1"),
        "no reload, no navigation"
    );
    browser.screenshot("dashboard-job").await;

    // Cancel stops the agent: its process is gone and the job is cancelled.
    browser.click("#cancel").await;
    wait_for_job_state(&mut spine, 1, JobState::Cancelled).await;
    wait_for("the agent's processes to end", || {
        common::agent_processes(&gate) == 0
    })
    .await;
    assert!(!gate.join("release").exists());
    // The page reloads itself when the job ends; then it can be run again.
    let state = wait_for_text(&browser, "#state", "cancelled").await;
    assert_eq!(state, "cancelled");
    browser.click("#retry").await;
    wait_for_text(&browser, "h1", "Job 2").await;
    wait_for("the re-run's agent to start", || started(&gate, 2)).await;
    std::fs::write(gate.join("release"), "").unwrap();
    wait_for_job_state(&mut spine, 2, JobState::Succeeded).await;

    // A reader (an active member of the organization) sees the jobs but no buttons.
    browser.click("#sign-out").await;
    browser.wait_for("#sign-in-github").await;
    spine.github.sign_in_as("octo-reader");
    sign_in_with_github(&browser, &url).await;
    let who = browser.wait_for("#who").await;
    assert!(
        who.contains("octo-reader") && !who.contains("admin"),
        "{who}"
    );
    browser.client.goto(&format!("{url}/jobs/1")).await.unwrap();
    wait_for_text(&browser, "#state", "cancelled").await;
    assert!(
        browser
            .client
            .find(browser::Locator::Css("#retry"))
            .await
            .is_err()
    );
    assert!(
        browser
            .client
            .find(browser::Locator::Css("#cancel"))
            .await
            .is_err()
    );
    // A forged re-run from the reader's own session (with its CSRF token and this origin) is refused.
    let forged = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             const csrf = document.querySelector('#sign-out').form.csrf.value;\
             fetch('/jobs/1/retry', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf=' + csrf}).then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(forged, serde_json::json!(403));
    assert_eq!(spine.jobs().await.len(), 2, "nothing was run again");

    // A delivery that fired nothing: its page says, for `talk`, the filter that stopped it.
    spine
        .deliver_example("issues", "dash-browser-nothing", "issues/labeled.json")
        .await;
    let mut verdict = String::new();
    for _ in 0..300 {
        browser
            .client
            .goto(&format!("{url}/deliveries/dash-browser-nothing"))
            .await
            .unwrap();
        verdict = text_of(&browser, "main").await;
        if verdict.contains("talk") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        verdict.contains("talk") && verdict.contains("labeled") && verdict.contains("opened"),
        "the filter that stopped `talk`: {verdict}"
    );
    browser.screenshot("dashboard-delivery").await;

    // Outside the users and organizations (or only invited): refused.
    browser.click("#sign-out").await;
    browser.wait_for("#sign-in-github").await;
    for outsider in ["stranger", "octo-invited"] {
        spine.github.sign_in_as(outsider);
        sign_in_with_github(&browser, &url).await;
        let note = browser.wait_for("#note").await;
        assert!(
            note.contains(&format!("{outsider} may not use this dashboard")),
            "{note}"
        );
        browser.client.goto(&url).await.unwrap();
        browser.wait_for("#sign-in-github").await;
    }
    browser.close().await;

    // The user's tokens were only used to ask who they are.
    let tokens = spine.github.user_tokens();
    assert_eq!(tokens.len(), 4, "one per sign-in: {tokens:?}");
    let log = spine.server.as_ref().unwrap().log();
    for (token, _) in &tokens {
        assert!(!log.contains(token.as_str()), "a user's token was logged");
    }
    assert!(!log.contains(CLIENT_SECRET));
    spine.assert_no_unexpected_calls();
}

fn session_of(response: &reqwest::Response) -> (String, String) {
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("nightshift_session="))
        .expect("a session cookie");
    let id = cookie
        .trim_start_matches("nightshift_session=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (id, cookie)
}

/// Reads an event stream until it says `needle`; what it read.
async fn read_until(stream: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("the stream never said `{needle}`: {text}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before `{needle}`: {text}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// The id of the event whose data says `needle`.
fn event_id_of(events: &str, needle: &str) -> i64 {
    events
        .split("\n\n")
        .find(|e| e.contains(needle))
        .and_then(|e| e.lines().find_map(|l| l.strip_prefix("id: ")))
        .unwrap_or_else(|| panic!("no event with `{needle}` and an id: {events}"))
        .parse()
        .unwrap()
}

/// The CSRF token in a page (the sign-out form's).
fn csrf_in(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn signed_out_visitors_get_nothing_and_forms_need_the_session_s_csrf_token_and_origin() {
    let mut spine = spine_with(&format!(
        "dashboard:\n  users: [octo-admin]\n  token: {TOKEN}\n"
    ))
    .await;
    spine.start().await;
    let url = spine.url();
    let client = http();
    spine
        .deliver_example("issues", "dash-http-1", "issues/opened.json")
        .await;
    let gate = spine.gate.clone();
    wait_for("the agent to start", || started(&gate, 1)).await;

    // Signed out: the sign-in page (no data) for pages, 401 for streams; the same for a wrong bearer.
    for path in ["/", "/jobs/1", "/?state=running"] {
        let response = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let page = response.text().await.unwrap();
        assert!(page.contains("id=\"token-sign-in\""), "{page}");
        assert!(
            !page.contains("Hello-World") && !page.contains("talker"),
            "{page}"
        );
    }
    for path in ["/events/jobs", "/jobs/1/log"] {
        let response = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let response = client
            .get(format!("{url}{path}"))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    // The probes and the webhook are still theirs.
    assert_eq!(
        client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The token's sign-in form: a wrong token is refused; the right one makes a session cookie.
    let refused = client
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", "guess")]))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("set-cookie").is_none());
    let signed_in = client
        .post(format!("{url}/auth/token"))
        .header("origin", &url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let (session, cookie) = session_of(&signed_in);
    assert_eq!(session.len(), 64, "256 random bits: {cookie}");
    assert!(session.bytes().all(|b| b.is_ascii_hexdigit()));
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/;"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    assert!(!cookie.contains("Secure"), "plain http here: {cookie}");
    let with_cookie = format!("nightshift_session={session}");

    // Signed in: the job's page, its hostile log line as text.
    let page = client
        .get(format!("{url}/jobs/1"))
        .header("cookie", &with_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"cancel\""), "the token is an admin");
    // The log line may not be stored yet when the page is read; the prompt is.
    assert!(
        page.contains("&lt;/textarea&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    let csrf = csrf_in(&page);

    // The log stream, resumed after the agent's first line (as a browser reconnecting sends Last-Event-ID).
    spine.wait_for_log_line(JobId(1), "first").await;
    let mut stream = client
        .get(format!("{url}/jobs/1/log"))
        .header("cookie", &with_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let events = read_until(&mut stream, "first").await;
    assert!(
        events.contains("\\\\u{1b}[31mred"),
        "escapes shown as text: {events}"
    );
    let first_id = event_id_of(&events, "first");
    drop(stream);
    std::fs::write(gate.join("say"), "").unwrap();
    spine.wait_for_log_line(JobId(1), "second").await;
    let mut resumed = client
        .get(format!("{url}/jobs/1/log"))
        .bearer_auth(TOKEN)
        .header("last-event-id", first_id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let events = read_until(&mut resumed, "second line").await;
    assert!(!events.contains("first"), "{events}");
    assert!(event_id_of(&events, "second line") > first_id);
    drop(resumed);

    // The jobs stream sends the rows.
    let mut rows = client
        .get(format!("{url}/events/jobs?state=running"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(rows.status(), 200);
    let chunk = read_until(&mut rows, "job-1").await;
    assert!(chunk.contains("event: rows"), "{chunk}");
    drop(rows);

    // Cancel and re-run: without the CSRF token, with another site's Origin, or with none: refused; the job
    // runs on.
    let post = |action: &str, csrf: Option<&str>, origin: Option<&str>| {
        let mut request = client
            .post(format!("{url}/jobs/1/{action}"))
            .header("cookie", &with_cookie);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("csrf", csrf.unwrap_or(""))]))
            .send()
    };
    let evil = "http://evil.example";
    for action in ["cancel", "retry"] {
        for (csrf, origin) in [
            (None, Some(url.as_str())),
            (Some("0".repeat(64).as_str()), Some(url.as_str())),
            (Some(csrf.as_str()), Some(evil)),
            (Some(csrf.as_str()), None),
        ] {
            let refused = post(action, csrf, origin).await.unwrap();
            assert_eq!(
                refused.status(),
                403,
                "{action}: csrf {csrf:?}, origin {origin:?}"
            );
        }
    }
    wait_for_job_state(&mut spine, 1, JobState::Running).await;
    assert_eq!(spine.jobs().await.len(), 1, "a refused re-run made a job");
    // A running job is not run again.
    let not_yet = post("retry", Some(&csrf), Some(&url)).await.unwrap();
    assert_eq!(not_yet.status(), 409);
    assert!(
        not_yet
            .text()
            .await
            .unwrap()
            .contains("only a failed or cancelled job")
    );
    let cancelled = post("cancel", Some(&csrf), Some(&url)).await.unwrap();
    assert_eq!(cancelled.status(), 303);
    assert_eq!(cancelled.headers()["location"], "/jobs/1");
    wait_for_job_state(&mut spine, 1, JobState::Cancelled).await;
    // Cancelled once: not again.
    let again = post("cancel", Some(&csrf), Some(&url)).await.unwrap();
    assert_eq!(again.status(), 409);
    assert!(
        again
            .text()
            .await
            .unwrap()
            .contains("it cannot be cancelled")
    );
    wait_for("the agent's processes to end", || {
        common::agent_processes(&gate) == 0
    })
    .await;

    // Signing out ends the session.
    let out = client
        .post(format!("{url}/auth/logout"))
        .header("cookie", &with_cookie)
        .header("origin", &url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let after = client
        .get(format!("{url}/"))
        .header("cookie", &with_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn with_nobody_configured_the_dashboard_says_how_to_turn_it_on_and_shows_nothing() {
    let mut spine = spine_with("").await;
    spine.start().await;
    let url = spine.url();
    let client = http();
    spine
        .deliver_example("issues", "dash-off-1", "issues/opened.json")
        .await;
    let page = client.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), 401);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("The dashboard is off") && page.contains("dashboard:"),
        "{page}"
    );
    assert!(!page.contains("Hello-World"));
    // No token works, whatever it is.
    for bearer in ["", "token", TOKEN] {
        let response = client
            .get(format!("{url}/events/jobs"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let signed = client
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", "")]))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 403);
    std::fs::write(spine.gate.join("release"), "").unwrap();
    spine.wait_for_finished_jobs(1).await;
}

/// `path`'s page read with the static token, once it contains `needle` (the dispatcher matches deliveries
/// after they are stored: wait for it, bounded).
async fn page_with(client: &reqwest::Client, url: &str, path: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .get(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let page = response.text().await.unwrap();
        if page.contains(needle) {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never showed {needle:?}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deliveries_triggers_and_budgets_show_each_triggers_verdict_to_the_signed_in_only() {
    let mut spine = spine_with(&format!(
        "dashboard:\n  users: [octo-admin]\n  token: {TOKEN}\n"
    ))
    .await;
    spine.start().await;
    let url = spine.url();
    let client = http();
    // One delivery fires `talk`, one fires nothing (talk listens to `opened` only).
    spine
        .deliver_example("issues", "dash-pages-fired", "issues/opened.json")
        .await;
    spine
        .deliver_example("issues", "dash-pages-nothing", "issues/labeled.json")
        .await;

    for path in [
        "/deliveries",
        "/deliveries/dash-pages-nothing",
        "/triggers",
        "/budgets",
    ] {
        let response = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let page = response.text().await.unwrap();
        assert!(
            !page.contains("dash-pages") && !page.contains("talk"),
            "{path} showed data signed out: {page}"
        );
    }

    let list = page_with(&client, &url, "/deliveries", "dash-pages-nothing").await;
    assert!(list.contains("dash-pages-fired"), "{list}");
    let one = page_with(&client, &url, "/deliveries/dash-pages-nothing", "talk").await;
    assert!(
        one.contains("labeled") && one.contains("opened"),
        "the verdict names the filter that stopped `talk`: {one}"
    );
    let fired = page_with(&client, &url, "/deliveries/dash-pages-fired", "/jobs/").await;
    assert!(fired.contains("talk"), "{fired}");
    let missing = client
        .get(format!("{url}/deliveries/no-such-delivery"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let triggers = page_with(&client, &url, "/triggers", "talk").await;
    assert!(
        triggers.contains("talker"),
        "the trigger's agent: {triggers}"
    );
    let budgets = page_with(&client, &url, "/budgets", "<main>").await;
    assert!(budgets.contains("class=\"budgets\""), "{budgets}");
    std::fs::write(spine.gate.join("release"), "").unwrap();
}

/// Two `serve` replicas on one Postgres behind a load balancer without sticky sessions (each its own data
/// directory, as on its own machine): a sign-in with GitHub started on one finishes on the other, once; the
/// session works on both, survives a restart, and signing out on one ends it on the other at once.
/// Starts a sign-in with GitHub at `url` (through a proxy that says `forwarded`, if any) and approves it on
/// the fake GitHub: the callback GitHub sends the browser to, and the browser's binding cookie (`name=value`).
async fn approved_on_github(
    client: &reqwest::Client,
    url: &str,
    forwarded: Option<&str>,
) -> (String, String) {
    approved_on_github_at(client, url, forwarded, url, "nightshift_signin=").await
}

/// [`approved_on_github`] for a service whose public address is `public` (its callback's), whose binding
/// cookie is named `cookie` (with its `=`).
async fn approved_on_github_at(
    client: &reqwest::Client,
    url: &str,
    forwarded: Option<&str>,
    public: &str,
    cookie: &str,
) -> (String, String) {
    let mut login = client.get(format!("{url}/auth/login"));
    if let Some(f) = forwarded {
        login = login.header("x-forwarded-for", f);
    }
    let login = login.send().await.unwrap();
    assert_eq!(login.status(), 303);
    let binding = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(cookie))
        .expect("the sign-in's binding cookie");
    let binding = binding.split(';').next().unwrap().to_owned();
    let authorize = reqwest::Url::parse(login.headers()["location"].to_str().unwrap()).unwrap();
    let query: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let page = client.get(authorize.clone()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("authorize-github"));
    let mut confirm = authorize.clone();
    confirm.set_path("/login/oauth/authorize/confirm");
    confirm.set_query(None);
    let approved = client
        .post(confirm)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("client_id", &get("client_id")),
            ("redirect_uri", &get("redirect_uri")),
            ("state", &get("state")),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 302);
    let callback = approved.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{public}/auth/callback?")),
        "{callback}"
    );
    (callback, binding)
}

/// Behind https (`public_url`), the sign-in's cookies carry the `__Host-` prefix, which a browser takes only
/// from this very host over https with `Path=/` and no `Domain`: a sibling subdomain cannot plant one. A
/// session id planted under the plain name (an attacker's own session, to sign the victim in as them) signs
/// no one in; the prefixed one does.
#[tokio::test]
async fn behind_https_the_sign_in_cookies_carry_the_host_prefix_and_a_plain_one_signs_no_one_in() {
    const PUBLIC: &str = "https://nightshift.example";
    let mut spine = spine_with(&format!(
        "public_url: {PUBLIC}\ndashboard:\n  users: [octo-admin]\n  client_id: {CLIENT_ID}\n  client_secret: {CLIENT_SECRET}\n"
    ))
    .await;
    spine.start().await;
    let url = spine.url();
    spine
        .github
        .add_oauth_client(CLIENT_ID, CLIENT_SECRET, &format!("{PUBLIC}/auth/callback"));
    spine.github.sign_in_as("octo-admin");
    let client = http();
    let (callback, binding) =
        approved_on_github_at(&client, &url, None, PUBLIC, "__Host-nightshift_signin=").await;
    // The browser comes back through the proxy; here, straight to the service.
    let callback = callback.replacen(PUBLIC, &url, 1);
    // The binding cookie under the plain name is no binding.
    let plain_binding = binding.replacen("__Host-", "", 1);
    let refused = client
        .get(&callback)
        .header("cookie", &plain_binding)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let signed_in = client
        .get(&callback)
        .header("cookie", &binding)
        .send()
        .await
        .unwrap();
    assert_eq!(
        signed_in.status(),
        303,
        "{}",
        spine.server.as_ref().unwrap().log()
    );
    let cookies: Vec<String> = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("__Host-nightshift_session="))
        .unwrap_or_else(|| panic!("{cookies:?}"));
    for c in &cookies {
        assert!(
            c.contains("; Secure") && c.contains("Path=/;") && !c.contains("Domain"),
            "a __Host- cookie must be Secure, Path=/ and host-only: {c}"
        );
    }
    let id = session_cookie
        .trim_start_matches("__Host-nightshift_session=")
        .split(';')
        .next()
        .unwrap();
    let page = |cookie: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(format!("{url}/"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let planted = page(format!("nightshift_session={id}")).await;
    assert!(!planted.contains("octo-admin"), "{planted}");
    let signed = page(format!("__Host-nightshift_session={id}")).await;
    assert!(signed.contains("octo-admin"), "{signed}");
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn replicas_on_one_postgres_share_sign_ins_and_sessions() {
    let mut spine = spine_with(&format!(
        "dashboard:\n  users: [octo-admin]\n  client_id: {CLIENT_ID}\n  client_secret: {CLIENT_SECRET}\n"
    ))
    .await;
    let db = spine.use_store(true).await;
    let root = spine.dir.path().to_owned();
    let config = std::fs::read_to_string(&spine.config).unwrap();
    let data = format!("data_dir: {}/data\n", root.display());
    assert!(config.contains(&data), "{config}");
    let configs = [root.join("replica-a.yml"), root.join("replica-b.yml")];
    for (file, dir) in configs.iter().zip(["/data-a", "/data-b"]) {
        std::fs::write(file, config.replace(&data, &data.replace("/data", dir))).unwrap();
    }
    let mut servers = Vec::new();
    for config in &configs {
        spine.config = config.clone();
        spine.start().await;
        servers.push(spine.server.take().unwrap());
    }
    let (a, b) = (servers[0].url.clone(), servers[1].url.clone());
    // The public address is A's: GitHub knows its callback there, and the balancer keeps the `Host`.
    let public_host = a.trim_start_matches("http://").to_owned();
    spine
        .github
        .add_oauth_client(CLIENT_ID, CLIENT_SECRET, &format!("{a}/auth/callback"));
    spine.github.sign_in_as("octo-admin");
    let client = http();

    // The sign-in starts on A: a state bound to this browser's cookie, and GitHub's authorize page.
    let (callback, binding) = approved_on_github(&client, &a, None).await;

    // GitHub's answer lands on B, which never saw the sign-in start.
    let on_b = callback.replacen(&a, &b, 1);
    let finish = |url: String, binding: String| {
        let client = client.clone();
        let host = public_host.clone();
        async move {
            client
                .get(url)
                .header("host", host)
                .header("cookie", binding)
                .send()
                .await
                .unwrap()
        }
    };
    let signed_in = finish(on_b.clone(), binding.clone()).await;
    assert_eq!(signed_in.status(), 303, "{}", servers[1].log());
    let (session, _) = session_of(&signed_in);
    // The same answer again, on either replica: the state was taken once, on B.
    for url in [on_b.clone(), callback.clone()] {
        let replay = finish(url, binding.clone()).await;
        assert_eq!(replay.status(), 403);
        assert!(replay.headers().get("set-cookie").is_none());
    }

    // The session works on both.
    let with_cookie = format!("nightshift_session={session}");
    let mut csrf = String::new();
    for url in [&a, &b] {
        let page = client
            .get(format!("{url}/"))
            .header("cookie", &with_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{url}");
        let page = page.text().await.unwrap();
        assert!(page.contains("octo-admin"), "{page}");
        let here = csrf_in(&page);
        assert!(
            csrf.is_empty() || csrf == here,
            "one session, one CSRF token"
        );
        csrf = here;
    }
    // The store knows its hash only: the id itself finds nothing there.
    let now = nightshift::now_ms();
    assert!(db.store.session(&session, now).await.unwrap().is_none());
    let hash = nightshift::web::auth::digest(&session);
    assert!(db.store.session(&hash, now).await.unwrap().is_some());

    // A restarts: no one is signed out.
    drop(servers.remove(0));
    spine.config = configs[0].clone();
    spine.start().await;
    let a = spine.url();
    let page = client
        .get(format!("{a}/"))
        .header("cookie", &with_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // Signing out on B ends the session on A at once.
    let out = client
        .post(format!("{b}/auth/logout"))
        .header("cookie", &with_cookie)
        .header("origin", &b)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    for url in [&a, &b] {
        let after = client
            .get(format!("{url}/"))
            .header("cookie", &with_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(after.status(), 401, "{url}");
    }
    spine.assert_no_unexpected_calls();
}

/// A client whose connections come from `local` (any 127.0.0.0/8 address reaches the service on loopback).
fn http_from(local: &str) -> reqwest::Client {
    nightshift::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// The sign-in states spent, in the service's SQLite store.
async fn sign_ins_stored(spine: &Spine) -> i64 {
    let url = format!(
        "sqlite://{}/state/nightshift.db?mode=ro",
        spine.dir.path().display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dashboard_signins_spent")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_client_address_and_many_addresses_cannot_crowd_out_a_real_one()
{
    use nightshift::web::limit::PER_ADDRESS_BURST;
    let mut spine = spine_with(&format!(
        "dashboard:\n  users: [octo-admin]\n  client_id: {CLIENT_ID}\n  client_secret: {CLIENT_SECRET}\n  \
         token: {TOKEN}\n  trusted_proxies: [127.0.0.9]\n"
    ))
    .await;
    spine.start().await;
    let url = spine.url();
    let login = |client: reqwest::Client, forwarded: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = client.get(format!("{url}/auth/login"));
            if let Some(f) = forwarded {
                request = request.header("x-forwarded-for", f);
            }
            request.send().await.unwrap()
        }
    };

    // One address: its burst of sign-ins, then 429 with when to come back.
    let one = http_from("127.0.0.1");
    for n in 0..PER_ADDRESS_BURST {
        assert_eq!(login(one.clone(), None).await.status(), 303, "login {n}");
    }
    let refused = login(one.clone(), None).await;
    assert_eq!(refused.status(), 429);
    assert!(retry_after(&refused) >= 1);
    assert!(refused.text().await.unwrap().contains("id=\"too-many\""));
    // Its token form too (even with the right token: the attempt is not looked at).
    let form_refused = one
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(form_refused.status(), 429);
    assert!(form_refused.headers().get("set-cookie").is_none());

    // Another address still signs in, with the token's form.
    let other = http_from("127.0.0.2");
    assert_eq!(login(other.clone(), None).await.status(), 303);
    let signed_in = other
        .post(format!("{url}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let (session, _) = session_of(&signed_in);
    assert!(!session.is_empty());

    // Guessing the token as a bearer is counted; the token itself never is.
    let guesser = http_from("127.0.0.3");
    for n in 0..PER_ADDRESS_BURST {
        let guess = guesser
            .get(format!("{url}/"))
            .bearer_auth(format!("guess-{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(guess.status(), 401, "guess {n}");
    }
    let guess = guesser
        .get(format!("{url}/"))
        .bearer_auth("one-more-guess")
        .send()
        .await
        .unwrap();
    assert_eq!(guess.status(), 429);
    let right = guesser
        .get(format!("{url}/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);

    // X-Forwarded-For is the client's own words unless the peer is a trusted proxy.
    let liar = http_from("127.0.0.5");
    let mut last = 0;
    for n in 0..=PER_ADDRESS_BURST {
        last = login(liar.clone(), Some(format!("203.0.113.{n}")))
            .await
            .status()
            .as_u16();
    }
    assert_eq!(last, 429, "a made-up X-Forwarded-For gave a fresh address");
    // Behind the trusted proxy, each client is its own address (read from the right).
    let proxy = http_from("127.0.0.9");
    for _ in 0..PER_ADDRESS_BURST {
        let r = login(proxy.clone(), Some("6.6.6.6, 198.51.100.1".into())).await;
        assert_eq!(r.status(), 303);
    }
    assert_eq!(
        login(proxy.clone(), Some("7.7.7.7, 198.51.100.1".into()))
            .await
            .status(),
        429
    );
    assert_eq!(
        login(proxy.clone(), Some("198.51.100.2".into()))
            .await
            .status(),
        303
    );

    // Many addresses (through the proxy) start more sign-ins than a store-kept budget ever allowed (1,024
    // per ten minutes): each gets its own, the store holds none of them, and a real user still signs in.
    let mut started = 0;
    for a in 0..120u32 {
        for _ in 0..PER_ADDRESS_BURST {
            let r = login(proxy.clone(), Some(format!("10.0.{a}.1"))).await;
            assert_eq!(r.status(), 303, "sign-in {started} from address {a}");
            started += 1;
        }
    }
    assert!(started > 1024);
    assert_eq!(sign_ins_stored(&spine).await, 0);
    spine
        .github
        .add_oauth_client(CLIENT_ID, CLIENT_SECRET, &format!("{url}/auth/callback"));
    spine.github.sign_in_as("octo-admin");
    let real = http_from("127.0.0.20");
    let (callback, binding) = approved_on_github(&real, &url, None).await;
    // Its state, with another browser's cookie, is no sign-in (and spends nothing).
    let come_back = |cookie: String| {
        let (real, callback) = (real.clone(), callback.clone());
        async move {
            real.get(&callback)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    let wrong = come_back(format!("nightshift_signin={}", "ab".repeat(20))).await;
    assert_eq!(wrong.status(), 403);
    assert_eq!(sign_ins_stored(&spine).await, 0);
    let signed_in = come_back(binding.clone()).await;
    assert_eq!(signed_in.status(), 303);
    assert!(!session_of(&signed_in).0.is_empty());
    assert_eq!(sign_ins_stored(&spine).await, 1);
    // The same answer again is refused before GitHub is asked (the fake would record a second exchange).
    let replay = come_back(binding).await;
    assert_eq!(replay.status(), 403);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn the_triggers_page_shows_each_repositorys_own_triggers_and_their_problems_escaped() {
    let mut spine = spine_with(&format!(
        "dashboard:\n  users: [octo-admin]\n  token: {TOKEN}\n"
    ))
    .await;
    // The repository's default branch: a good trigger with a hostile description, and a broken file whose
    // very name is markup (a file name is anyone's who can push).
    spine.commit(
        "main",
        "main",
        ".nightshift/triggers/own.yml",
        "description: \"<script>alert('own')</script>\"\non:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: own\n",
    );
    spine.commit(
        "main",
        "main",
        ".nightshift/triggers/<img src=x onerror=alert(1)>.yml",
        "on: issues\nagent: reply\nprompt: x\n",
    );
    spine.commit(
        "main",
        "main",
        ".nightshift/triggers/typo.yml",
        "on: issues\nagent: reply\npromt: x\n",
    );
    spine.start().await;
    let url = spine.url();
    let client = http();
    // Before any event of it: the repository's triggers were never read, and the page says nothing of them.
    let before = page_with(&client, &url, "/triggers", "talk").await;
    assert!(!before.contains("its own triggers"), "{before}");

    spine
        .deliver_example("issues", "repo-own-1", "issues/opened.json")
        .await;
    let page = page_with(&client, &url, "/triggers", "its own triggers").await;
    assert!(
        page.contains("<h1 class=\"repo-triggers\">Codertocat/Hello-World: its own triggers</h1>"),
        "{page}"
    );
    assert!(page.contains("<h2>Hello-World.own</h2>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(&#39;own&#39;)&lt;/script&gt;"),
        "{page}"
    );
    // The broken files, with where (file:line:col) and what.
    assert!(
        page.contains(".nightshift/triggers/typo.yml:3:1</code>"),
        "{page}"
    );
    assert!(page.contains("unknown field `promt`"), "{page}");
    assert!(
        page.contains(".nightshift/triggers/&lt;img src=x onerror=alert(1)&gt;.yml:1:1"),
        "{page}"
    );
    for raw in ["<script>alert", "<img src=x"] {
        assert!(!page.contains(raw), "{raw} unescaped in:\n{page}");
    }
    // Filtered to another repository: not shown.
    let other = page_with(&client, &url, "/triggers?repo=someone%2Felse", "Triggers").await;
    assert!(!other.contains("its own triggers"), "{other}");
    // Both the service's trigger and the repository's own fired.
    std::fs::write(spine.gate.join("release"), "").unwrap();
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().any(|j| j.trigger == "Hello-World.own"),
        "{jobs:#?}"
    );
    spine.assert_no_unexpected_calls();
}
