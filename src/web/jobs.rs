//! The jobs table (`/`, live over `/events/jobs`), a job's page (`/jobs/{id}`, its log live over
//! `/jobs/{id}/log`), and cancel and re-run for admins.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::info;

use super::html::{Viewer, escape, page, safe_url, text};
use super::{CsrfForm, Dashboard, POLL, auth, see_other};
use crate::ids::JobId;
use crate::store::{Cancel, JobFilter, JobRecord, JobState, Retry};

/// Rows of the jobs table.
const ROWS: u32 = 100;

/// Log lines a job's page shows at once (the stream goes on from there), and reads at a time.
const PAGE_LOG_LINES: u32 = 5_000;
const LOG_BATCH: u32 = 500;

/// A text field of a stored job spec (JSON), if it has it.
pub fn spec_field(spec: &str, field: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(spec)
        .ok()?
        .get(field)?
        .as_str()
        .map(str::to_owned)
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn took(job: &JobRecord) -> String {
    match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => {
            let secs = (f - s).max(0) / 1000;
            if secs >= 3600 {
                format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
            } else if secs >= 60 {
                format!("{}m{:02}s", secs / 60, secs % 60)
            } else {
                format!("{:.1}s", (f - s).max(0) as f64 / 1000.0)
            }
        }
        _ => String::new(),
    }
}

fn cost(job: &JobRecord) -> String {
    job.usage
        .as_ref()
        .and_then(|u| u.cost_usd)
        .map(|c| format!("${c:.2}"))
        .unwrap_or_default()
}

fn shown_state(job: &JobRecord) -> &'static str {
    if job.waiting.is_some() && job.state == JobState::Queued {
        "waiting"
    } else {
        job.state.as_str()
    }
}

fn ended(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    state: Option<String>,
    repo: Option<String>,
    trigger: Option<String>,
}

impl Filter {
    fn to_store(&self) -> JobFilter {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| v.chars().take(200).collect::<String>())
        };
        JobFilter {
            state: given(&self.state).and_then(|s| JobState::parse(&s).ok()),
            repo: given(&self.repo),
            trigger: given(&self.trigger),
            limit: ROWS,
        }
    }

    fn query(&self) -> String {
        let f = self.to_store();
        let pairs: Vec<(&str, &str)> = [
            ("state", f.state.map(|s| s.as_str())),
            ("repo", f.repo.as_deref()),
            ("trigger", f.trigger.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
        auth::form_encode(&pairs)
    }
}

/// The jobs table's rows (HTML).
async fn rows(dash: &Dashboard, jobs: &[JobRecord]) -> String {
    let mut out = String::new();
    for job in jobs {
        let agent = dash.agent_of(job.id).await;
        let _ = write!(
            out,
            "<tr id=\"job-{id}\"><td><a href=\"/jobs/{id}\">{id}</a></td><td class=\"state {state}\">{state}</td>\
             <td>{trigger}</td><td>{repo}</td><td>{agent}</td><td>{started}</td><td>{took}</td><td>{cost}</td></tr>",
            id = job.id.0,
            state = shown_state(job),
            trigger = text(&job.trigger),
            repo = text(&job.repo),
            agent = text(&agent),
            started = job.started_at.map(utc).unwrap_or_default(),
            took = took(job),
            cost = cost(job),
        );
    }
    if jobs.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"none\">No jobs.</td></tr>");
    }
    out
}

pub(super) fn viewer(who: &auth::Identity) -> Viewer<'_> {
    Viewer {
        login: &who.login,
        admin: who.admin,
        csrf: who.csrf(),
    }
}

pub(super) fn unavailable(who: &auth::Identity, e: anyhow::Error) -> Response {
    tracing::warn!("dashboard: reading the store failed: {e:#}");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The store did not answer",
        Some(&viewer(who)),
        "<p>Reading the store failed (see the service's log). Try again in a moment.</p>",
    )
}

/// `GET /`: the jobs table, filtered by `state`, `repo`, `trigger`.
pub async fn list(
    State(dash): State<Arc<Dashboard>>,
    Query(filter): Query<Filter>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return dash.sign_in_page(StatusCode::UNAUTHORIZED, None);
    };
    let jobs = match dash.store.filtered_jobs(&filter.to_store()).await {
        Ok(jobs) => jobs,
        Err(e) => return unavailable(&who, e),
    };
    let f = filter.to_store();
    let mut states = String::from("<option value=\"\">any</option>");
    for s in [
        JobState::Queued,
        JobState::Running,
        JobState::Delivering,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ] {
        let _ = write!(
            states,
            "<option{}>{}</option>",
            if f.state == Some(s) { " selected" } else { "" },
            s.as_str()
        );
    }
    let body = format!(
        "<form method=\"get\" action=\"/\" class=\"filters\">\
         <label>State <select name=\"state\" id=\"f-state\">{states}</select></label> \
         <label>Repository <input name=\"repo\" id=\"f-repo\" value=\"{repo}\"></label> \
         <label>Trigger <input name=\"trigger\" id=\"f-trigger\" value=\"{trigger}\"></label> \
         <button type=\"submit\">Filter</button></form>\n\
         <table><thead><tr><th>Job</th><th>State</th><th>Trigger</th><th>Repository</th><th>Agent</th>\
         <th>Started (UTC)</th><th>Took</th><th>Cost</th></tr></thead>\
         <tbody id=\"jobs\" data-events=\"/events/jobs?{query}\">{rows}</tbody></table>",
        repo = text(f.repo.as_deref().unwrap_or_default()),
        trigger = text(f.trigger.as_deref().unwrap_or_default()),
        query = escape(&filter.query()),
        rows = rows(&dash, &jobs).await,
    );
    page(StatusCode::OK, "Jobs", Some(&viewer(&who)), &body)
}

/// An mpsc receiver as a stream (the body of an event stream).
struct Events(tokio::sync::mpsc::Receiver<Event>);

impl futures_core::Stream for Events {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// An event stream fed by `feed`, which runs while the visitor listens (it ends when a send fails) and
/// holds one of the dashboard's stream slots. None: every slot is taken.
fn stream<F, Fut>(dash: &Arc<Dashboard>, feed: F) -> Response
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Ok(slot) = dash.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views open: reload the page later",
        )
            .into_response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = feed(tx);
    tokio::spawn(async move {
        let _slot = slot;
        task.await;
    });
    let mut response = Sse::new(Events(rx))
        .keep_alive(KeepAlive::default())
        .into_response();
    super::html::secure_headers(response.headers_mut());
    response
}

/// Whether the visitor behind `who` is still signed in (a stream ends when they sign out).
async fn still_signed_in(dash: &Dashboard, who: &auth::Identity) -> bool {
    match &who.session {
        Some((id, _)) => matches!(dash.sessions.get(id).await, Ok(Some(_))),
        None => true,
    }
}

/// `GET /events/jobs`: the table's rows again (event `rows`, the `<tbody>`'s HTML as a JSON string)
/// whenever they change; looked at once a second.
pub async fn list_events(
    State(dash): State<Arc<Dashboard>>,
    Query(filter): Query<Filter>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return (StatusCode::UNAUTHORIZED, "sign in first").into_response();
    };
    let filter = filter.to_store();
    let feeder = dash.clone();
    stream(&dash, move |tx| async move {
        let mut last = None;
        loop {
            if !still_signed_in(&feeder, &who).await {
                return;
            }
            if let Ok(jobs) = feeder.store.filtered_jobs(&filter).await {
                let html = rows(&feeder, &jobs).await;
                if last.as_ref() != Some(&html) {
                    let event = Event::default()
                        .event("rows")
                        .json_data(&html)
                        .expect("a string is JSON");
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    last = Some(html);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return,
            }
        }
    })
}

/// The class a log line is shown with: nightshift's own lines (`ns`) apart from what the agent printed
/// (`out`, `err`), so an agent cannot print a line that passes for nightshift's ("verify: `tests` passed").
fn stream_class(stream: &str) -> &'static str {
    match stream {
        "stderr" => "err",
        "nightshift" => "ns",
        _ => "out",
    }
}

fn log_html(lines: &[(i64, crate::store::LogLine)]) -> String {
    let mut out = String::new();
    for (_, line) in lines {
        let _ = write!(
            out,
            "<span class=\"{}\">{}\n</span>",
            stream_class(&line.stream),
            text(&line.line)
        );
    }
    out
}

/// `GET /jobs/{id}`.
pub async fn show(
    State(dash): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return dash.sign_in_page(StatusCode::UNAUTHORIZED, None);
    };
    let not_found = |who: &auth::Identity| {
        page(
            StatusCode::NOT_FOUND,
            "No such job",
            Some(&viewer(who)),
            "<p><a href=\"/\">All jobs</a></p>",
        )
    };
    let Ok(id) = id.parse::<i64>().map(JobId) else {
        return not_found(&who);
    };
    let job = match dash.store.job(id).await {
        Ok(Some(job)) => job,
        Ok(None) => return not_found(&who),
        Err(e) => return unavailable(&who, e),
    };
    let spec = dash.store.job_spec(id).await.ok().flatten();
    let outputs = dash.store.outputs(id).await.unwrap_or_default();
    let log = dash
        .store
        .job_log_after(id, 0, PAGE_LOG_LINES)
        .await
        .unwrap_or_default();
    let retried_from = dash.store.retried_from(id).await.ok().flatten();
    let agent = spec
        .as_deref()
        .and_then(|s| spec_field(s, "agent"))
        .unwrap_or_default();
    let prompt = spec.as_deref().and_then(|s| spec_field(s, "prompt"));
    let output_kind = spec.as_deref().and_then(|s| spec_field(s, "output"));

    let mut body = String::new();
    let repo_link = match crate::ids::RepoName::parse(&job.repo) {
        Some(repo) => format!(
            "<a href=\"{}\">{}</a>",
            escape(&format!("{}/{repo}", dash.web_url)),
            text(&job.repo)
        ),
        None => text(&job.repo),
    };
    let _ = write!(
        body,
        "<dl class=\"job\"><dt>State</dt><dd id=\"state\" class=\"state {state}\">{state}</dd>\
         <dt>Trigger</dt><dd id=\"trigger\">{trigger}</dd><dt>Repository</dt><dd>{repo_link}</dd>\
         <dt>Agent</dt><dd>{agent}</dd><dt>Output</dt><dd>{output}</dd>\
         <dt>Queued</dt><dd>{queued}</dd><dt>Started</dt><dd>{started}</dd><dt>Ended</dt><dd>{ended}</dd>\
         <dt>Took</dt><dd>{took}</dd><dt>Attempts</dt><dd>{attempts} (transient retries: {retries})</dd>",
        state = shown_state(&job),
        trigger = text(&job.trigger),
        agent = text(&agent),
        output = text(output_kind.as_deref().unwrap_or_default()),
        queued = utc(job.created_at),
        started = job.started_at.map(utc).unwrap_or_default(),
        ended = job.finished_at.map(utc).unwrap_or_default(),
        took = took(&job),
        attempts = job.attempts,
        retries = job.retries,
    );
    if let Some(usage) = &job.usage {
        let _ = write!(
            body,
            "<dt>Spent</dt><dd id=\"usage\">{}</dd>",
            text(&usage.to_string())
        );
    }
    if let Some(why) = &job.waiting {
        let _ = write!(
            body,
            "<dt>Waiting</dt><dd>{}{}</dd>",
            text(why),
            job.next_attempt_at
                .map(|t| format!(" (until {} UTC)", utc(t)))
                .unwrap_or_default()
        );
    }
    if let Some(from) = retried_from {
        let _ = write!(
            body,
            "<dt>Re-run of</dt><dd><a href=\"/jobs/{0}\">job {0}</a></dd>",
            from.0
        );
    }
    let _ = write!(
        body,
        "<dt>Delivery</dt><dd>{}</dd></dl>",
        text(&job.delivery_id.to_string())
    );
    if let Some(error) = &job.error {
        let _ = write!(
            body,
            "<h2>Error</h2><pre id=\"error\">{}</pre>",
            text(error)
        );
    }
    // Admins' buttons: cancel while it may be cancelled, re-run once it failed or was cancelled.
    if who.admin {
        let csrf = escape(who.csrf().unwrap_or_default());
        let mut buttons = String::new();
        if matches!(job.state, JobState::Queued | JobState::Running) {
            let _ = write!(
                buttons,
                "<form method=\"post\" action=\"/jobs/{id}/cancel\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" id=\"cancel\">Cancel</button></form> ",
                id = id.0
            );
        }
        if matches!(job.state, JobState::Failed | JobState::Cancelled) {
            let _ = write!(
                buttons,
                "<form method=\"post\" action=\"/jobs/{id}/retry\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" id=\"retry\">Re-run</button></form>",
                id = id.0
            );
        }
        if !buttons.is_empty() {
            let _ = write!(body, "<p class=\"actions\">{buttons}</p>");
        }
    }
    if !outputs.is_empty() {
        body.push_str("<h2>Outputs</h2><ul id=\"outputs\">");
        for output in &outputs {
            let link = output
                .url
                .as_deref()
                .and_then(safe_url)
                .map(|u| format!(" <a href=\"{0}\" rel=\"noreferrer\">{0}</a>", text(u)))
                .unwrap_or_default();
            let _ = write!(
                body,
                "<li>{kind} <code>{key}</code>{pending}{link}</li>",
                kind = text(&output.kind),
                key = text(&output.key),
                pending = if output.pending { " (pending)" } else { "" },
            );
        }
        body.push_str("</ul>");
    }
    if let Some(prompt) = prompt {
        let _ = write!(
            body,
            "<h2>Prompt</h2><p class=\"note\">As the trigger rendered it; the agent also gets the repository's \
             AGENTS.md and the selected skills.</p><pre id=\"prompt\">{}</pre>",
            text(&prompt)
        );
    }
    let after = log.last().map_or(0, |(n, _)| *n);
    let live = if ended(job.state) {
        String::new()
    } else {
        format!(" data-events=\"/jobs/{}/log?after={after}\"", id.0)
    };
    let _ = write!(
        body,
        "<h2>Log</h2><pre id=\"log\" class=\"log\"{live}>{}</pre>",
        log_html(&log)
    );
    page(
        StatusCode::OK,
        &format!("Job {}", id.0),
        Some(&viewer(&who)),
        &body,
    )
}

#[derive(Deserialize)]
pub struct After {
    after: Option<i64>,
}

/// `GET /jobs/{id}/log?after=N`: the job's log lines after line N (or after the `Last-Event-ID` a
/// reconnecting browser sends), each as event `line` with its number as the id, as they are written; event
/// `end` (with the job's state) once it has ended and every line was sent.
pub async fn log_events(
    State(dash): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    Query(after): Query<After>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return (StatusCode::UNAUTHORIZED, "sign in first").into_response();
    };
    let Ok(id) = id.parse::<i64>().map(JobId) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut after = resume.or(after.after).unwrap_or(0).max(0);
    let feeder = dash.clone();
    stream(&dash, move |tx| async move {
        loop {
            if !still_signed_in(&feeder, &who).await {
                return;
            }
            // The state first: a job that has ended wrote its last line before.
            let state = match feeder.store.job(id).await {
                Ok(Some(job)) => Some(job.state),
                Ok(None) => return,
                Err(_) => None,
            };
            let lines = feeder
                .store
                .job_log_after(id, after, LOG_BATCH)
                .await
                .unwrap_or_default();
            let full = lines.len() as u32 == LOG_BATCH;
            for (n, line) in lines {
                after = n;
                let data = serde_json::json!({
                    "s": stream_class(&line.stream),
                    "l": super::html::visible(&line.line),
                });
                let event = Event::default()
                    .event("line")
                    .id(n.to_string())
                    .json_data(data)
                    .expect("JSON");
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            if let Some(state) = state.filter(|s| ended(*s)) {
                let _ = tx
                    .send(Event::default().event("end").data(state.as_str()))
                    .await;
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return,
            }
        }
    })
}

/// The checks every admin POST passes: signed in, the form from this dashboard, an admin.
async fn admin_post(
    dash: &Dashboard,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<auth::Identity, Box<Response>> {
    let Some(who) = dash.identify(headers).await else {
        return Err(Box::new(dash.sign_in_page(StatusCode::UNAUTHORIZED, None)));
    };
    if !auth::post_allowed(
        &who,
        headers,
        form.csrf.as_deref(),
        &dash.expected_origin(headers),
    ) {
        return Err(Box::new(page(
            StatusCode::FORBIDDEN,
            "Refused",
            Some(&viewer(&who)),
            "<p>That form did not come from this dashboard (or the page is older than your session): go back, reload, and try again.</p>",
        )));
    }
    if !who.admin {
        return Err(Box::new(page(
            StatusCode::FORBIDDEN,
            "Refused",
            Some(&viewer(&who)),
            "<p>Only the dashboard's admins may cancel and re-run jobs.</p>",
        )));
    }
    Ok(who)
}

fn job_id(id: &str) -> Option<JobId> {
    id.parse::<i64>().ok().map(JobId)
}

/// What an admin may do to a job from its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Retry,
}

/// What an [`Action`] came to.
enum Outcome {
    /// Done: to this job's page (the new job's, for a re-run).
    Done(JobId),
    NoSuchJob,
    /// Refused by the job's state (or its spec), and why.
    Refused(String),
}

impl Action {
    /// What the log says, and the title of the page when the store refuses.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Action::Cancel => ("job cancelled on the dashboard", "Not cancelled"),
            Action::Retry => ("job re-run on the dashboard", "Not run again"),
        }
    }

    async fn apply(self, dash: &Dashboard, id: JobId, login: &str) -> anyhow::Result<Outcome> {
        Ok(match self {
            Action::Cancel => {
                let reason = format!("cancelled by {login} on the dashboard");
                match dash.store.cancel_job(id, &reason).await? {
                    Cancel::Cancelled | Cancel::Requested => Outcome::Done(id),
                    Cancel::NoSuchJob => Outcome::NoSuchJob,
                    Cancel::Refused(state) => Outcome::Refused(format!(
                        "it is {}: it cannot be cancelled",
                        state.as_str()
                    )),
                }
            }
            Action::Retry => match dash.store.retry_job(id).await? {
                Retry::Queued(new) => Outcome::Done(new),
                Retry::NoSuchJob => Outcome::NoSuchJob,
                Retry::Refused(state) => Outcome::Refused(format!(
                    "it is {}: only a failed or cancelled job can be run again",
                    state.as_str()
                )),
                Retry::NoSpec => Outcome::Refused(
                    "it could not even be prepared: there is no job spec to run again".into(),
                ),
                Retry::PayloadPruned => {
                    Outcome::Refused("its event's payload was removed by retention".into())
                }
            },
        })
    }
}

/// `POST /jobs/{id}/cancel` and `POST /jobs/{id}/retry` (admins, from this dashboard's own form: see
/// [`admin_post`]): the action, then to the job's page (a re-run: the new job's).
async fn act(
    dash: &Dashboard,
    id: &str,
    headers: &HeaderMap,
    form: &CsrfForm,
    action: Action,
) -> Response {
    let who = match admin_post(dash, headers, form).await {
        Ok(who) => who,
        Err(refused) => return *refused,
    };
    let Some(id) = job_id(id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (done, not_done) = action.words();
    match action.apply(dash, id, &who.login).await {
        Ok(Outcome::Done(to)) => {
            info!(job = id.0, to = to.0, login = %who.login, "{done}");
            see_other(&format!("/jobs/{}", to.0), &[])
        }
        Ok(Outcome::NoSuchJob) => StatusCode::NOT_FOUND.into_response(),
        Ok(Outcome::Refused(why)) => page(
            StatusCode::CONFLICT,
            not_done,
            Some(&viewer(&who)),
            &format!(
                "<p>Job {}: {}. <a href=\"/jobs/{0}\">Back</a></p>",
                id.0,
                escape(&why)
            ),
        ),
        Err(e) => unavailable(&who, e),
    }
}

/// `POST /jobs/{id}/cancel` (admins).
pub async fn cancel(
    State(dash): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(&dash, &id, &headers, &form, Action::Cancel).await
}

/// `POST /jobs/{id}/retry` (admins): a new job with the same frozen spec; to its page.
pub async fn retry(
    State(dash): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    act(&dash, &id, &headers, &form, Action::Retry).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_line_never_looks_like_nightshifts() {
        let line = |stream: &str, text: &str| crate::store::LogLine {
            stream: stream.to_owned(),
            line: text.to_owned(),
        };
        let html = log_html(&[
            (1, line("nightshift", "verify: `tests` passed in 3 ms")),
            (2, line("stdout", "verify: `tests` passed in 3 ms")),
            (3, line("stderr", "oops")),
        ]);
        assert_eq!(
            html,
            "<span class=\"ns\">verify: `tests` passed in 3 ms\n</span>\
             <span class=\"out\">verify: `tests` passed in 3 ms\n</span>\
             <span class=\"err\">oops\n</span>"
        );
    }
}
