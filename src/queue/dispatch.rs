//! Matching stored deliveries against the triggers, after the webhook has answered.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{Instrument, info, info_span, warn};

use super::Pipeline;

use crate::repo::git::GitAuth;
use crate::source::event::Event;
use crate::store::{KnownRepo, Matched, NewJob, StoredDelivery, Verdicts};
use crate::trigger::{Decision, MAX_CHANGED_FILES, MatchInput, Skip, Standing, TriggerSet};

/// How often stored-but-unmatched deliveries are looked for without a wake-up (after a crash, or when
/// another process stored them).
const SWEEP: Duration = Duration::from_secs(5);

/// The most deliveries matched at once, each of a different repository.
const LANES: usize = 8;

/// How many repositories' oldest waiting deliveries one look reads (busy lanes among them are skipped; at
/// most [`LANES`] are).
const HEADS: u32 = 64;

/// The most deliveries of one repository a lane matches in one go (its backlog, oldest first); the matches
/// are recorded together, in one write, instead of one write each. A lane goes on with its next ones while
/// fewer than [`LANES`] are busy, and ends after this many when all are.
const LANE_BATCH: u32 = 32;

/// The most batches a lane matches before it ends and the dispatcher looks at every repository's oldest
/// waiting delivery again (this one's too: a delivery of it stored under a lower id after the lane read
/// past that id, by a batch or a replica that committed later, is its oldest then).
const LANE_ROUNDS: usize = 8;

/// How long a matched delivery that fired nothing may wait to be recorded with the lane's next ones. One
/// that fired a job is recorded at once: its job never waits for the matching of the deliveries after it.
const RECORD_WITHIN: Duration = Duration::from_millis(20);

/// How long an actor's looked-up permission is trusted before it is asked again.
const STANDING_TTL: Duration = Duration::from_secs(300);

/// The longest matching one event against a set of triggers may take (templates run on a fuel budget
/// too; this bounds a set with very many triggers).
const MATCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Actors' permissions as GitHub last answered, per repository and login (both lower-case), with when.
#[derive(Default)]
pub struct StandingCache {
    entries: std::sync::Mutex<
        std::collections::HashMap<(String, String), (tokio::time::Instant, Standing)>,
    >,
}

impl StandingCache {
    fn get(&self, repo: &str, login: &str) -> Option<Standing> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(repo.to_owned(), login.to_owned()))
            .filter(|(at, _)| at.elapsed() < STANDING_TTL)
            .map(|(_, s)| s.clone())
    }

    fn put(&self, repo: &str, login: &str, standing: Standing) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (at, _)| at.elapsed() < STANDING_TTL);
        entries.insert(
            (repo.to_owned(), login.to_owned()),
            (tokio::time::Instant::now(), standing),
        );
    }
}

/// Deliveries are matched one repository at a time, in the order they came, but different repositories
/// side by side: reading one repository's own triggers (a first clone of a large repository can take
/// minutes) never holds up another's.
#[derive(Default)]
struct Lanes {
    /// Repositories (lower-case full names; "" for events about none) with a delivery being matched.
    busy: std::sync::Mutex<HashSet<String>>,
}

impl Lanes {
    /// Whether `news` names lanes only, each of them busy (nothing rang, a sweep's timeout: false).
    fn all_busy(&self, news: &crate::source::News) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        !news.unnamed && !news.lanes.is_empty() && news.lanes.iter().all(|l| busy.contains(l))
    }

    /// Whether fewer than [`LANES`] are busy: a lane may start without another ending first.
    fn room(&self) -> bool {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).len() < LANES
    }

    /// Takes the lane when it is free (and fewer than [`LANES`] are busy); the guard frees it when dropped,
    /// also when matching panicked.
    fn take(self: &Arc<Self>, lane: &str, pipeline: &Arc<Pipeline>) -> Option<LaneGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        (busy.len() < LANES && busy.insert(lane.to_owned())).then(|| LaneGuard {
            lanes: self.clone(),
            lane: lane.to_owned(),
            pipeline: pipeline.clone(),
        })
    }
}

/// A lane being matched in: freed when dropped, and the dispatcher woken for the repository's next delivery.
struct LaneGuard {
    lanes: Arc<Lanes>,
    lane: String,
    pipeline: Arc<Pipeline>,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.lanes
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.lane);
        self.pipeline.deliveries_waiting.ring();
    }
}

pub async fn run(pipeline: Arc<Pipeline>) {
    let lanes = Arc::new(Lanes::default());
    loop {
        // Registered before looking, so a delivery stored (or a lane freed) while we look still wakes us.
        let notified = pipeline.deliveries_waiting.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // News only of lanes being matched: their tasks read their backlogs, and ring when done.
        if lanes.all_busy(&pipeline.deliveries_waiting.take_news()) {
            let _ = tokio::time::timeout(SWEEP, notified).await;
            continue;
        }
        match start_matching(&pipeline, &lanes).await {
            Ok(0) => {
                let _ = tokio::time::timeout(SWEEP, notified).await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("looking for deliveries to match failed: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Starts matching the oldest waiting delivery of every repository that has none being matched; returns
/// how many it started. Only each repository's oldest waiting delivery is looked at, so a repository with a
/// long backlog (or a slow lane) never hides another's. A lane's task wakes the dispatcher when it is done,
/// for that repository's next one.
async fn start_matching(pipeline: &Arc<Pipeline>, lanes: &Arc<Lanes>) -> Result<usize> {
    let heads = pipeline.store.unmatched_heads(HEADS).await?;
    let mut started = 0;
    for delivery in heads {
        let Some(guard) = lanes.take(&lane(&delivery), pipeline) else {
            continue;
        };
        started += 1;
        let pipeline = pipeline.clone();
        let lanes = lanes.clone();
        tokio::spawn(async move {
            let mut from = From::Head(delivery);
            for round in 1.. {
                match match_lane(&pipeline, from).await {
                    // The lane's next deliveries, read past its last one by index, while another lane can
                    // start beside it, for LANE_ROUNDS batches; then it ends, and the dispatcher looks for
                    // every repository's oldest (this one's too) in order.
                    Ok(Some(last)) if round < LANE_ROUNDS && lanes.room() => {
                        from = From::After(last)
                    }
                    Ok(_) => break,
                    Err(e) => {
                        // It stays unmatched and is tried again, after a pause.
                        warn!("matching failed: {e:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            drop(guard);
        });
    }
    Ok(started)
}

/// The lane of a delivery: its repository's full name, lower-cased ("" when it is about none).
fn lane(delivery: &StoredDelivery) -> String {
    crate::source::lane_of(delivery.repo.as_deref())
}

/// What matching needs besides the payload: nightshift's own login, and a pull request's changed files when
/// a trigger filters on paths (from the API: GitHub puts no file list in pull request payloads).
async fn match_input(pipeline: &Pipeline, event: &Event, sets: &[Arc<TriggerSet>]) -> MatchInput {
    let mut input = MatchInput {
        bot_login: pipeline.bot_login().map(str::to_owned),
        max_depth: Some(pipeline.config.max_depth),
        verify: pipeline.config.verify.clone(),
        ..Default::default()
    };
    input.depth = lineage_depth(pipeline, event).await;
    if input.depth > 0 {
        info!(
            depth = input.depth,
            "nightshift's own output set this event off"
        );
    }
    let mut logins: Vec<String> = sets
        .iter()
        .flat_map(|set| set.logins_to_look_up(event, input.bot_login.as_deref()))
        .collect();
    logins.sort();
    logins.dedup();
    for login in logins {
        let standing = standing(pipeline, event, &login).await;
        input.standing.insert(login, standing);
    }
    if sets.iter().any(|set| set.needs_changed_files(event)) {
        match changed_files(pipeline, event).await {
            Ok(files) => input.changed_files = Some(files),
            Err(e) => warn!(
                "the pull request's changed files are unknown, so path filters will not pass: {e:#}"
            ),
        }
    }
    // Read only when a trigger would fire but for what the pull request is: a stranger's comments, or ones
    // without the command, cost no call to GitHub.
    if let Some(number) = commented_pull(event)
        && sets.iter().any(|set| set.needs_pull(event, &input))
    {
        input.pull = Some(
            pull_facts(pipeline, event, number)
                .await
                .map_err(|e| format!("{e:#}")),
        );
        if let Some(Err(e)) = &input.pull {
            warn!("the pull request's head, base and fork-ness are unknown: {e}");
        }
    }
    input
}

/// The pull request a comment is on, when the payload has no pull request of its own (`issue_comment`).
fn commented_pull(event: &Event) -> Option<u64> {
    match (&event.pull_request, &event.issue) {
        (None, Some(issue)) if issue.is_pull_request => Some(issue.number),
        _ => None,
    }
}

/// A pull request's facts, asked of GitHub: a comment's payload carries neither its head nor its fork-ness.
async fn pull_facts(
    pipeline: &Pipeline,
    event: &Event,
    number: u64,
) -> Result<crate::source::event::PullFacts> {
    let Some(repo) = &event.repository else {
        anyhow::bail!("the event has no repository");
    };
    if !pipeline.github.has_credentials() {
        anyhow::bail!("there are no GitHub credentials to read it");
    }
    let client = pipeline.github.client(event.installation).await?;
    let route = format!("/repos/{}/pulls/{number}", repo.full_name);
    let answer = client.get("reading the pull request", &route).await?;
    let facts = crate::source::event::PullFacts::from_value(&answer)
        .map_err(|e| anyhow::anyhow!("GitHub's answer is not a pull request: {e}"))?;
    if facts.number != number {
        anyhow::bail!("GitHub answered with pull request #{}", facts.number);
    }
    Ok(facts)
}

/// The most jobs named by markers whose depth is looked up for one event.
const MAX_MARKERS: usize = 16;

/// The event's lineage depth: 0 unless nightshift's own account set it off; then 1 + the deepest job
/// whose marker is in text nightshift's account wrote in the object the event is about (1 when none is
/// found). When nightshift does not know its account, the marker in the event's own text is all it has
/// (as for trust, see `is_from_nightshift`).
async fn lineage_depth(pipeline: &Pipeline, event: &Event) -> u32 {
    let bot = pipeline.bot_login();
    if !crate::trigger::is_from_nightshift(event, bot) {
        return 0;
    }
    let texts: Vec<&str> = match bot {
        Some(bot) => event.texts_written_by(bot),
        None => event.body().into_iter().collect(),
    };
    let mut jobs: Vec<_> = texts
        .iter()
        .flat_map(|t| crate::ids::marked_jobs(t))
        .collect();
    jobs.sort_unstable_by_key(|j| j.0);
    jobs.dedup();
    let mut deepest = 0;
    for job in jobs.into_iter().take(MAX_MARKERS) {
        match pipeline.store.job_spec(job).await {
            Ok(Some(spec)) => {
                let depth = serde_json::from_str::<serde_json::Value>(&spec)
                    .ok()
                    .and_then(|v| v["depth"].as_u64())
                    .unwrap_or(0);
                deepest = deepest.max(u32::try_from(depth).unwrap_or(u32::MAX));
            }
            Ok(None) => {}
            Err(e) => warn!(%job, "could not read the depth of the job a marker names: {e:#}"),
        }
    }
    deepest.saturating_add(1)
}

/// Puts 👀 on the comment that carried a slash command, once its job is queued. Its failure is logged;
/// the match stands.
async fn react(pipeline: &Pipeline, event: &Event) {
    let (Some(repo), Some(id)) = (&event.repository, event.comment.as_ref().and_then(|c| c.id))
    else {
        return;
    };
    if !pipeline.github.has_credentials() {
        return;
    }
    let route = match event.name.as_str() {
        "issue_comment" => format!("/repos/{}/issues/comments/{id}/reactions", repo.full_name),
        "pull_request_review_comment" => {
            format!("/repos/{}/pulls/comments/{id}/reactions", repo.full_name)
        }
        _ => return,
    };
    let posted = async {
        let client = pipeline.github.client(event.installation).await?;
        let body = serde_json::json!({ "content": "eyes" });
        // GitHub answers a second identical reaction with the first one: retrying cannot add another.
        client
            .post_repeatable("reacting to the command", &route, &body)
            .await?;
        anyhow::Ok(())
    };
    if let Err(e) = posted.await {
        warn!("could not react to the command's comment: {e:#}");
    }
}

/// How `login` relates to the event's repository, from their permission on it (cached for a few minutes);
/// unknown when it cannot be asked.
async fn standing(pipeline: &Pipeline, event: &Event, login: &str) -> Standing {
    let Some(repo) = &event.repository else {
        return Standing::Unknown("the event has no repository".into());
    };
    let name = repo.full_name.to_string();
    let key = name.to_lowercase();
    if let Some(known) = pipeline.standing.get(&key, login) {
        return known;
    }
    if !pipeline.github.has_credentials() {
        return Standing::Unknown("there are no GitHub credentials to look it up".into());
    }
    if login.is_empty() || !login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Standing::Unknown(format!("`{login}` is not a GitHub user's login"));
    }
    let asked = async {
        let client = pipeline.github.client(event.installation).await?;
        let route = format!("/repos/{name}/collaborators/{login}/permission");
        let answer = client
            .get("looking up the actor's permission", &route)
            .await?;
        anyhow::Ok(answer)
    };
    let standing = match asked.await {
        Ok(answer) => match answer["permission"].as_str() {
            Some(permission) => Standing::from_permission(permission, login, &name),
            None => Standing::Unknown("GitHub's answer names no permission".into()),
        },
        // Not a collaborator, or no such user: no access.
        Err(e) if crate::github::gh_error(&e).is_some_and(|g| g.status == Some(404)) => {
            Standing::Known("NONE".into())
        }
        Err(e) => {
            warn!(%login, "could not look up the actor's permission: {e:#}");
            // Not cached: the next event asks again.
            return Standing::Unknown(format!("looking up their permission failed: {e:#}"));
        }
    };
    pipeline.standing.put(&key, login, standing.clone());
    standing
}

async fn changed_files(pipeline: &Pipeline, event: &Event) -> Result<Vec<String>> {
    let (Some(repo), Some(pr)) = (&event.repository, &event.pull_request) else {
        anyhow::bail!("not a pull request event");
    };
    if !pipeline.github.has_credentials() {
        anyhow::bail!("no GitHub credentials");
    }
    let client = pipeline.github.client(event.installation).await?;
    let route = format!("/repos/{}/pulls/{}/files", repo.full_name, pr.number);
    let files = client
        .get_all(
            "listing the pull request's files",
            &route,
            MAX_CHANGED_FILES,
        )
        .await?;
    Ok(files
        .iter()
        .filter_map(|f| f["filename"].as_str().map(str::to_owned))
        .collect())
}

/// The repository's own triggers, when the service reads them; a repository whose triggers cannot be read
/// is matched against the service's triggers alone.
async fn repo_triggers(pipeline: &Pipeline, event: &Event) -> Option<Arc<TriggerSet>> {
    if !pipeline.config.repo_triggers || event.repository.is_none() || event.name == "schedule" {
        return None;
    }
    if let Some(set) = pipeline.repo_triggers.cached(event).await {
        return Some(set);
    }
    // Credentials only when the files have to be read.
    let auth = match pipeline.github.has_credentials() {
        true => match pipeline.github.client(event.installation).await {
            Ok(client) => client.git_auth(),
            Err(e) => {
                warn!("reading the repository's own triggers without credentials: {e:#}");
                GitAuth::none()
            }
        },
        false => GitAuth::none(),
    };
    let agents = pipeline.config.agent_kinds();
    match pipeline
        .repo_triggers
        .read(event, &pipeline.workspaces, &auth, &agents)
        .await
    {
        Ok(set) => Some(set),
        Err(e) => {
            warn!("the repository's own triggers could not be read: {e:#}");
            None
        }
    }
}

/// The triggers of `sets` that fire for `event`, by name, with their jobs, and why the others did not
/// (`nightshift deliveries`). Templates (a repository's own
/// among them) are rendered off the async threads, each on a fuel budget, and the whole within
/// [`MATCH_TIMEOUT`]: a trigger set that takes longer fails every trigger of it with a clear error instead
/// of holding up the service.
async fn fire(
    sets: Vec<Arc<TriggerSet>>,
    event: Event,
    input: MatchInput,
    urgent: bool,
) -> (Fired, Verdicts) {
    let mut fired = Vec::new();
    let mut verdicts = Verdicts::default();
    let kind = crate::trigger::EventKind::from_name(&event.name);
    let repo = event.repository.as_ref().map(|r| r.full_name.to_string());
    for set in sets {
        // No trigger of the set looks at this event: nothing to decide, and no thread to hand it to.
        let looked_at = match (kind, &repo) {
            (Some(kind), Some(repo)) => set.candidates(kind, repo).next().is_some(),
            _ => false,
        };
        if !looked_at {
            verdicts.others = verdicts
                .others
                .saturating_add(u32::try_from(set.triggers().len()).unwrap_or(u32::MAX));
            continue;
        }
        let (set2, event2, input2) = (set.clone(), event.clone(), input.clone());
        let matching = offload(urgent, move || {
            let kind = crate::trigger::EventKind::from_name(&event2.name);
            let decided = set2.decide_candidates(&event2, &input2);
            let others = set2.triggers().len() - decided.len();
            let (mut jobs, mut skipped) = (Vec::new(), Vec::new());
            for (t, decision) in decided {
                match decision {
                    Decision::Fire(job) => {
                        let by_command = kind
                            .and_then(|k| t.events.get(&k))
                            .is_some_and(|f| f.command.is_some());
                        jobs.push((t.name.clone(), job, by_command));
                    }
                    Decision::Skip(Skip(reason)) => skipped.push((t.name.clone(), reason)),
                }
            }
            (jobs, skipped, others)
        });
        match tokio::time::timeout(MATCH_TIMEOUT, matching).await {
            Ok(Ok((jobs, skipped, others))) => {
                fired.extend(jobs);
                for (trigger, reason) in skipped {
                    verdicts.skip(&trigger, &reason);
                }
                verdicts.others = verdicts
                    .others
                    .saturating_add(u32::try_from(others).unwrap_or(u32::MAX));
            }
            Ok(Err(e)) => warn!("matching the triggers failed: {e}"),
            Err(_) => {
                let error = format!(
                    "matching took longer than {}s, so no job was prepared",
                    MATCH_TIMEOUT.as_secs()
                );
                warn!("{error}");
                let (Some(kind), Some(repo)) = (
                    crate::trigger::EventKind::from_name(&event.name),
                    &event.repository,
                ) else {
                    continue;
                };
                fired.extend(
                    set.candidates(kind, &repo.full_name.to_string())
                        .map(|t| (t.name.clone(), Err(error.clone()), false)),
                );
            }
        }
    }
    (fired, verdicts)
}

/// Runs `work` off the async threads: on tokio's blocking threads when `urgent` (a lane's head, which may
/// be an event alone, waited for), else on the dispatcher's lower-priority ones ([`super::background`]).
async fn offload<T: Send + 'static>(
    urgent: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    if urgent {
        Ok(tokio::task::spawn_blocking(work).await?)
    } else {
        super::background::run(work).await
    }
}

/// What fired: each trigger's name, its job (or why it could not be prepared), and whether a slash command
/// fired it.
type Fired = Vec<(String, Result<Box<crate::queue::JobSpec>, String>, bool)>;

/// Why no trigger could even look at `event`, when none could.
fn unmatchable(event: &Event) -> Option<String> {
    if crate::trigger::EventKind::from_name(&event.name).is_none() {
        return Some(format!("nightshift triggers on no `{}` events", event.name));
    }
    event
        .repository
        .is_none()
        .then(|| "the event is about no repository".to_owned())
}

/// Where a lane's matching starts: its oldest waiting delivery, matched first and at once (found by the
/// dispatcher), or past the last delivery the lane matched (its next ones, while it goes on).
enum From {
    Head(StoredDelivery),
    After(StoredDelivery),
}

/// Matches a lane's deliveries from `from` on: a head, then the backlog of its repository after it (at most
/// [`LANE_BATCH`] in all), in order, and records the matches together: at once after a match that fired a
/// job, else within [`RECORD_WITHIN`] or at the end. The head is matched at the service's priority and
/// before the backlog is read, so an event that comes alone is matched as fast as ever; the backlog's CPU
/// work runs on the dispatcher's lower-priority threads ([`super::background`]). Returns the last delivery
/// matched (none: nothing was waiting past `From::After`). A delivery whose matching failed stays unmatched
/// (the error is returned); the ones before it are recorded, the ones after it wait for the lane's next
/// turn.
async fn match_lane(pipeline: &Pipeline, from: From) -> Result<Option<StoredDelivery>> {
    let mut pending = Pending::default();
    let mut since = None;
    let mut step = async |delivery: &StoredDelivery,
                          urgent: bool,
                          payload: Option<bytes::Bytes>|
           -> Result<()> {
        let span = info_span!("delivery", id = %delivery.delivery_id, event = %delivery.event, repo = tracing::field::Empty);
        let outcome = match_one(pipeline, delivery, urgent, payload)
            .instrument(span.clone())
            .await;
        let fired = match outcome {
            Ok((matched, command_event)) => {
                let fired = !matched.jobs.is_empty();
                pending.matches.push(matched);
                pending.then.push((command_event, span));
                fired
            }
            Err(e) => {
                record(pipeline, &mut pending).await?;
                return Err(e.context(format!("delivery {}", delivery.delivery_id)));
            }
        };
        let first = *since.get_or_insert_with(tokio::time::Instant::now);
        if fired || first.elapsed() >= RECORD_WITHIN {
            record(pipeline, &mut pending).await?;
            since = None;
        }
        Ok(())
    };
    let (after, limit, headed) = match from {
        From::Head(head) => {
            step(&head, true, None).await?;
            (head, LANE_BATCH - 1, true)
        }
        From::After(last) => (last, LANE_BATCH, false),
    };
    let outcome = async {
        let backlog = pipeline.store.unmatched_in_lane(&after, limit).await?;
        let payloads = lane_payloads(pipeline, &backlog).await?;
        for (delivery, payload) in backlog.iter().zip(payloads) {
            step(delivery, false, Some(payload)).await?;
        }
        anyhow::Ok(backlog.into_iter().last())
    }
    .await;
    // What was matched is recorded, whatever came after it.
    record(pipeline, &mut pending).await?;
    // A head with no backlog was matched all the same.
    Ok(outcome?.or(headed.then_some(after)))
}

/// The payloads of a lane's `backlog`, in its order: those this process just stored from memory, the rest
/// in one read.
async fn lane_payloads(
    pipeline: &Pipeline,
    backlog: &[StoredDelivery],
) -> Result<Vec<bytes::Bytes>> {
    let mut payloads: Vec<Option<bytes::Bytes>> =
        backlog.iter().map(|d| pipeline.fresh.take(d.id)).collect();
    let missing: Vec<i64> = backlog
        .iter()
        .zip(&payloads)
        .filter(|(_, payload)| payload.is_none())
        .map(|(d, _)| d.id)
        .collect();
    if !missing.is_empty() {
        let mut read = pipeline
            .store
            .delivery_payloads(&missing)
            .await?
            .into_iter();
        for payload in payloads.iter_mut().filter(|p| p.is_none()) {
            *payload = read.next().map(bytes::Bytes::from);
        }
    }
    Ok(payloads
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// Deliveries matched and not recorded yet: the matches, and for each the event whose slash command fired
/// a job (to react to) and the delivery's span.
#[derive(Default)]
struct Pending {
    matches: Vec<Matched>,
    then: Vec<(Option<Event>, tracing::Span)>,
}

/// Records the `pending` matches in one write, then wakes a worker per job queued and reacts to the slash
/// commands that queued one. `pending` is left empty.
async fn record(pipeline: &Pipeline, pending: &mut Pending) -> Result<()> {
    if pending.matches.is_empty() {
        return Ok(());
    }
    let queued = pipeline.store.record_matches(&pending.matches).await?;
    let matches = std::mem::take(&mut pending.matches);
    for ((matched, (command_event, span)), queued) in
        matches.into_iter().zip(pending.then.drain(..)).zip(queued)
    {
        span.in_scope(|| {
            info!(
                triggers = matched.jobs.len(),
                queued,
                skipped = matched.verdicts.skipped.len(),
                "matched"
            )
        });
        if queued > 0 {
            // One idle worker per job queued, not all of them: the others would only race it for the
            // store's write lock and find nothing.
            for _ in 0..queued {
                pipeline.jobs_waiting.notify_one();
            }
            // Only the match that queued the jobs reacts: a delivery matched again after a crash queues none.
            if let Some(event) = &command_event {
                react(pipeline, event).instrument(span).await;
            }
        }
    }
    Ok(())
}

/// Matches one delivery against the triggers: the jobs it fires and why the others did not, with the
/// event when a slash command of it fired a job. Nothing is recorded here.
async fn match_one(
    pipeline: &Pipeline,
    delivery: &StoredDelivery,
    urgent: bool,
    payload: Option<bytes::Bytes>,
) -> Result<(Matched, Option<Event>)> {
    // Read in the delivery's lane (a backlog's together, `lane_payloads`), once: the dispatcher's look for
    // waiting deliveries stays small. A delivery this process just stored is matched from memory (the
    // bytes it committed).
    let payload = match payload.or_else(|| pipeline.fresh.take(delivery.id)) {
        Some(payload) => payload,
        None => pipeline.store.delivery_payload(delivery.id).await?.into(),
    };
    crate::source::installations::on_event(&*pipeline.store, &delivery.event, &payload).await?;
    // The event whose comment carried a slash command that queued a job.
    let mut command_event = None;
    let mut verdicts = Verdicts::default();
    // A lane's backlog is parsed on the dispatcher's lower-priority threads (`background`): under a flood,
    // acknowledging webhooks comes first.
    let parsed = if urgent {
        Event::parse(&delivery.event, &payload)
    } else {
        let (name, payload) = (delivery.event.clone(), payload.clone());
        super::background::run(move || Event::parse(&name, &payload)).await?
    };
    let jobs = match parsed {
        Ok(event) => {
            if let Some(r) = &event.repository {
                tracing::Span::current().record("repo", tracing::field::display(&r.full_name));
                if event.name != "schedule" {
                    // What scheduled jobs, which have no delivery of their own, need to know.
                    let known = KnownRepo {
                        full_name: r.full_name.to_string(),
                        installation_id: event.installation.map(|i| i.0 as i64),
                        clone_url: r.clone_url.clone(),
                        default_branch: r.default_branch.clone(),
                    };
                    // Written only when it changed: every store write is an fsync.
                    let changed = pipeline
                        .known_repos
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(known.full_name.clone(), known.clone())
                        .is_none_or(|old| old != known);
                    if changed {
                        pipeline.store.upsert_repository(&known).await?;
                    }
                }
            }
            let mut sets = vec![pipeline.triggers()];
            if let Some(own) = repo_triggers(pipeline, &event).await {
                sets.push(own);
            }
            let input = match_input(pipeline, &event, &sets).await;
            let fired;
            (fired, verdicts) = fire(sets, event.clone(), input, urgent).await;
            if let Some(why) = unmatchable(&event) {
                verdicts.note(&why);
            }
            if fired
                .iter()
                .any(|(_, job, by_command)| *by_command && job.is_ok())
            {
                command_event = Some(event.clone());
            }
            fired
                .into_iter()
                .map(|(trigger, job, _)| {
                    let repo = event
                        .repository
                        .as_ref()
                        .map(|r| r.full_name.to_string())
                        .unwrap_or_default();
                    match job {
                        Ok(spec) => NewJob {
                            trigger: trigger.clone(),
                            repo,
                            spec: serde_json::to_string(&spec)
                                .expect("a JobSpec always serializes"),
                            error: None,
                            concurrency_group: spec.concurrency_group.clone(),
                            cancel_in_progress: spec.cancel_in_progress,
                        },
                        Err(error) => {
                            warn!(trigger = %trigger, "{error}");
                            NewJob {
                                trigger: trigger.clone(),
                                repo,
                                spec: "{}".to_owned(),
                                error: Some(error),
                                concurrency_group: None,
                                cancel_in_progress: false,
                            }
                        }
                    }
                })
                .collect()
        }
        Err(e) => {
            warn!("the stored payload does not parse ({e}); no trigger can match it");
            verdicts.note(&format!("the stored payload does not parse: {e}"));
            Vec::new()
        }
    };
    Ok((
        Matched {
            delivery: delivery.id,
            jobs,
            verdicts,
        },
        command_event,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::News;

    /// The dispatcher passes over a ring only when it named lanes and each is being matched: a ring that
    /// named none (a lane done, another replica's delivery, a schedule), a lane not busy, or no ring at all
    /// (the sweep) makes it look.
    #[test]
    fn only_news_of_busy_lanes_is_passed_over() {
        let lanes = Lanes::default();
        lanes
            .busy
            .lock()
            .unwrap()
            .extend(["o/busy".to_owned(), String::new()]);
        let news = |unnamed: bool, named: &[&str]| News {
            unnamed,
            lanes: named.iter().map(|l| l.to_string()).collect(),
        };
        assert!(lanes.all_busy(&news(false, &["o/busy"])));
        assert!(lanes.all_busy(&news(false, &["o/busy", ""])));
        assert!(!lanes.all_busy(&news(false, &["o/busy", "o/idle"])));
        assert!(!lanes.all_busy(&news(true, &["o/busy"])));
        assert!(!lanes.all_busy(&news(false, &[])));
    }
}
