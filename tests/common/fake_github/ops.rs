//! What each operation does to the fake's state, and GitHub's rules on it.

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    CheckRun, Comment, Created, Edit, Inner, Issue, Mint, Pull, PullFile, Reaction, Review,
    TOKEN_LOGIN, diff_lines, example, now, query_pairs, rewrite_urls,
};

pub(super) enum Answer {
    /// A status and body; whether the fake's state changed.
    Done(StatusCode, Value, bool),
    /// A page of a list, with its `Link` header.
    Page(Response),
    /// What GitHub answers by its rules: status, message, `errors`.
    Refused(StatusCode, String, Value),
    /// Something nightshift should never ask (an operation the fake does not implement, a bad parameter).
    Unexpected(StatusCode, String),
}

fn not_found() -> Answer {
    Answer::Refused(StatusCode::NOT_FOUND, "Not Found".into(), Value::Null)
}

fn invalid(message: &str, errors: Value) -> Answer {
    Answer::Refused(StatusCode::UNPROCESSABLE_ENTITY, message.into(), errors)
}

/// A user as GitHub shows one (every field of `simple-user`, which clients deserialize strictly).
fn user_json(login: &str) -> Value {
    let mut v = example("issue")["user"].clone();
    rewrite_urls(&mut v, "octocat", login);
    v["login"] = json!(login);
    v["type"] = json!(if login.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    });
    v
}

fn label_json(repo: &str, name: &str) -> Value {
    json!({
        "id": 208045946,
        "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=",
        "url": format!("https://api.github.com/repos/{repo}/labels/{name}"),
        "name": name,
        "description": null,
        "color": "f29513",
        "default": false,
    })
}

fn comment_json(c: &Comment) -> Value {
    let mut v = example("issue-comment");
    rewrite_urls(&mut v, "octocat/Hello-World", &c.repo);
    v["id"] = json!(c.id);
    v["body"] = json!(c.body);
    v["html_url"] = json!(format!(
        "https://github.com/{}/issues/{}#issuecomment-{}",
        c.repo, c.number, c.id
    ));
    v["url"] = json!(format!(
        "https://api.github.com/repos/{}/issues/comments/{}",
        c.repo, c.id
    ));
    v["issue_url"] = json!(format!(
        "https://api.github.com/repos/{}/issues/{}",
        c.repo, c.number
    ));
    v["user"] = user_json(&c.author);
    v["created_at"] = json!(c.created_at);
    v["updated_at"] = json!(c.updated_at);
    v
}

fn issue_json(i: &Issue) -> Value {
    let mut v = example("issue");
    rewrite_urls(&mut v, "octocat/Hello-World", &i.repo);
    rewrite_urls(&mut v, "/1347", &format!("/{}", i.number));
    v["number"] = json!(i.number);
    v["id"] = json!(i.number * 7919);
    v["title"] = json!(i.title);
    v["body"] = json!(i.body);
    v["state"] = json!(i.state);
    v["user"] = user_json(&i.author);
    v["labels"] = json!(
        i.labels
            .iter()
            .map(|l| label_json(&i.repo, l))
            .collect::<Vec<_>>()
    );
    v["html_url"] = json!(format!("https://github.com/{}/issues/{}", i.repo, i.number));
    v["created_at"] = json!(i.created_at);
    v["updated_at"] = json!(i.updated_at);
    v["locked"] = json!(false);
    v.as_object_mut().unwrap().remove("pull_request");
    v
}

/// A pull request as issues/* answer it (with a `pull_request` key).
fn pull_issue_json(p: &Pull) -> Value {
    let mut v = issue_json(&Issue {
        number: p.number,
        repo: p.repo.clone(),
        title: p.title.clone(),
        body: p.body.clone(),
        labels: p.labels.clone(),
        state: p.state.clone(),
        author: p.author.clone(),
        created_at: p.created_at.clone(),
        updated_at: p.updated_at.clone(),
    });
    v["html_url"] = json!(format!("https://github.com/{}/pull/{}", p.repo, p.number));
    v["pull_request"] = json!({
        "url": format!("https://api.github.com/repos/{}/pulls/{}", p.repo, p.number),
        "html_url": format!("https://github.com/{}/pull/{}", p.repo, p.number),
        "diff_url": format!("https://github.com/{}/pull/{}.diff", p.repo, p.number),
        "patch_url": format!("https://github.com/{}/pull/{}.patch", p.repo, p.number),
        "merged_at": null,
    });
    v
}

fn pull_json(p: &Pull, example_name: &str) -> Value {
    let mut v = example(example_name);
    rewrite_urls(&mut v, "octocat/Hello-World", &p.repo);
    rewrite_urls(&mut v, "/1347", &format!("/{}", p.number));
    v["number"] = json!(p.number);
    v["id"] = json!(p.number * 7919);
    v["title"] = json!(p.title);
    v["body"] = json!(p.body);
    v["state"] = json!(p.state);
    v["draft"] = json!(p.draft);
    v["locked"] = json!(false);
    v["user"] = user_json(&p.author);
    v["labels"] = json!(
        p.labels
            .iter()
            .map(|l| label_json(&p.repo, l))
            .collect::<Vec<_>>()
    );
    v["html_url"] = json!(format!("https://github.com/{}/pull/{}", p.repo, p.number));
    v["created_at"] = json!(p.created_at);
    v["updated_at"] = json!(p.updated_at);
    if v.get("merged").is_some() {
        v["merged"] = json!(p.merged);
    }
    let head_owner = p.head_repo.split('/').next().unwrap_or_default();
    v["head"]["ref"] = json!(p.head);
    v["head"]["sha"] = json!(p.head_sha);
    v["head"]["label"] = json!(format!("{head_owner}:{}", p.head));
    v["head"]["repo"]["full_name"] = json!(p.head_repo);
    v["head"]["repo"]["fork"] = json!(p.head_repo != p.repo);
    // A fork is another repository, with an id of its own.
    if p.head_repo != p.repo {
        let base_id = v["base"]["repo"]["id"].as_u64().unwrap_or(1296269);
        v["head"]["repo"]["id"] = json!(base_id + 1_000_000);
    }
    v["head"]["repo"]["owner"]["login"] = json!(head_owner);
    v["base"]["ref"] = json!(p.base);
    v["base"]["label"] = json!(format!(
        "{}:{}",
        p.repo.split('/').next().unwrap_or_default(),
        p.base
    ));
    v["base"]["repo"]["full_name"] = json!(p.repo);
    v["base"]["repo"]["fork"] = json!(false);
    v
}

fn review_json(r: &Review) -> Value {
    let mut v = example("pull-request-review");
    rewrite_urls(&mut v, "octocat/Hello-World", &r.repo);
    rewrite_urls(&mut v, "/12", &format!("/{}", r.number));
    v["id"] = json!(r.id);
    v["body"] = json!(r.body);
    v["commit_id"] = json!(r.commit_id);
    v["user"] = user_json(&r.author);
    v["state"] = json!(match r.event.as_str() {
        "APPROVE" => "APPROVED",
        "REQUEST_CHANGES" => "CHANGES_REQUESTED",
        "COMMENT" => "COMMENTED",
        _ => "PENDING",
    });
    v["html_url"] = json!(format!(
        "https://github.com/{}/pull/{}#pullrequestreview-{}",
        r.repo, r.number, r.id
    ));
    v
}

fn check_run_json(c: &CheckRun) -> Value {
    let mut v = example("check-run");
    rewrite_urls(&mut v, "github/hello-world", &c.repo);
    rewrite_urls(&mut v, "octocat/Hello-World", &c.repo);
    v["id"] = json!(c.id);
    v["name"] = json!(c.name);
    v["head_sha"] = json!(c.head_sha);
    v["external_id"] = json!(c.external_id.clone().unwrap_or_default());
    v["status"] = json!(c.status);
    v["conclusion"] = json!(c.conclusion);
    v["details_url"] = json!(c.details_url);
    v["html_url"] = json!(format!("https://github.com/{}/runs/{}", c.repo, c.id));
    v["url"] = json!(format!(
        "https://api.github.com/repos/{}/check-runs/{}",
        c.repo, c.id
    ));
    let mut output = json!({
        "title": c.output["title"],
        "summary": c.output["summary"],
        "text": c.output["text"],
        "annotations_count": c.annotations.len(),
        "annotations_url": format!("https://api.github.com/repos/{}/check-runs/{}/annotations", c.repo, c.id),
    });
    for key in ["title", "summary", "text"] {
        if output[key].is_null() {
            output[key] = Value::Null;
        }
    }
    v["output"] = output;
    v["app"]["slug"] = json!("nightshift-test");
    v
}

fn reaction_json(r: &Reaction) -> Value {
    let mut v = example("reaction");
    v["id"] = json!(r.id);
    v["content"] = json!(r.content);
    v["user"] = user_json(&r.user);
    v
}

/// One page of `items` as GitHub gives it: `per_page` (default 30, at most 100) and `page`, and a `Link`
/// header with `next`/`last` (and `prev`/`first`) on the fake's own address. `wrap` puts the page in an object
/// under that key with `total_count` (check runs).
fn page(inner: &Inner, uri: &Uri, items: Vec<Value>, wrap: Option<&str>) -> Answer {
    let query = query_pairs(uri);
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<usize>().ok())
    };
    let per_page = get("per_page").unwrap_or(30).clamp(1, 100);
    let number = get("page").unwrap_or(1).max(1);
    let last = items.len().div_ceil(per_page).max(1);
    let total = items.len();
    let slice: Vec<Value> = items
        .into_iter()
        .skip((number - 1) * per_page)
        .take(per_page)
        .collect();
    let body = match wrap {
        Some(key) => json!({ "total_count": total, key: slice }),
        None => Value::Array(slice),
    };
    let mut response = axum::Json(body).into_response();
    let link_to = |n: usize| {
        let mut pairs: Vec<String> = query
            .iter()
            .filter(|(k, _)| k != "page" && k != "per_page")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        pairs.push(format!("per_page={per_page}"));
        pairs.push(format!("page={n}"));
        format!("<{}{}?{}>", inner.url, uri.path(), pairs.join("&"))
    };
    let mut links = vec![];
    if number < last {
        links.push(format!("{}; rel=\"next\"", link_to(number + 1)));
        links.push(format!("{}; rel=\"last\"", link_to(last)));
    }
    if number > 1 {
        links.push(format!("{}; rel=\"prev\"", link_to(number - 1)));
        links.push(format!("{}; rel=\"first\"", link_to(1)));
    }
    if !links.is_empty() {
        response
            .headers_mut()
            .insert("link", HeaderValue::from_str(&links.join(", ")).unwrap());
    }
    Answer::Page(response)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn label_names(v: &Value) -> Vec<String> {
    let items = match v {
        Value::Object(o) => o.get("labels").cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    items
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|l| l.as_str().or_else(|| l["name"].as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn edit(by: &str, before: &str) -> Edit {
    Edit {
        by: by.to_owned(),
        before: before.to_owned(),
        at: now(),
    }
}

pub(super) fn apply(
    inner: &Inner,
    op: &str,
    params: &HashMap<String, String>,
    uri: &Uri,
    body: &Value,
) -> Answer {
    let repo = format!(
        "{}/{}",
        params.get("owner").map(String::as_str).unwrap_or_default(),
        params.get("repo").map(String::as_str).unwrap_or_default()
    );
    let mut numbers = HashMap::new();
    for name in [
        "issue_number",
        "pull_number",
        "comment_id",
        "review_id",
        "check_run_id",
    ] {
        if let Some(raw) = params.get(name) {
            match raw.parse::<u64>() {
                Ok(n) => {
                    numbers.insert(name, n);
                }
                Err(_) => {
                    return Answer::Unexpected(
                        StatusCode::NOT_FOUND,
                        format!("`{name}` is not a number: {raw}"),
                    );
                }
            }
        }
    }
    let query: HashMap<String, String> = query_pairs(uri).into_iter().collect();
    let own = inner.own_login();
    let mut state = inner.state.lock().unwrap();
    let exists = |state: &super::FakeState, number: u64| {
        state
            .issues
            .iter()
            .any(|i| i.repo == repo && i.number == number)
            || state
                .pulls
                .iter()
                .any(|p| p.repo == repo && p.number == number)
    };
    let text = |key: &str| body[key].as_str().map(str::to_owned);
    match op {
        "apps/create-installation-access-token" => {
            let token = format!(
                "ghs_fake{}_{}",
                params["installation_id"],
                state.installation_tokens.len()
            );
            // A scoped token (what nightshift mints per job): exactly one repository by name, and only
            // permissions GitHub knows, at a level it knows.
            if body.as_object().is_some_and(|o| !o.is_empty()) {
                let repos = body["repositories"].as_array();
                if repos.is_none_or(|r| r.len() != 1 || !r[0].is_string()) {
                    return Answer::Unexpected(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("a token must be for one repository: {body}"),
                    );
                }
                let known = ["metadata", "contents", "issues", "pull_requests", "checks"];
                let permissions = body["permissions"].as_object();
                let fine = permissions.is_some_and(|p| {
                    !p.is_empty()
                        && p.iter().all(|(k, v)| {
                            known.contains(&k.as_str())
                                && matches!(v.as_str(), Some("read" | "write"))
                        })
                });
                if !fine {
                    return Answer::Unexpected(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("bad permissions for a token: {body}"),
                    );
                }
                if body.as_object().is_some_and(|o| o.len() != 2) {
                    return Answer::Unexpected(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("unknown fields for a token: {body}"),
                    );
                }
            }
            state.installation_tokens.push(token.clone());
            let life = state
                .token_life
                .unwrap_or(std::time::Duration::from_secs(3600));
            let at = std::time::SystemTime::now();
            state.token_expiry.insert(token.clone(), at + life);
            state.mints.push(Mint {
                token: token.clone(),
                body: body.clone(),
                at,
            });
            let mut v = example("installation-token");
            v["token"] = json!(token);
            v["expires_at"] = json!(humantime::format_rfc3339_millis(at + life).to_string());
            Answer::Done(StatusCode::CREATED, v, true)
        }
        "apps/create-from-manifest" => match params
            .get("code")
            .and_then(|code| super::manifest::convert(&mut state, code))
        {
            Some((_, v)) => Answer::Done(StatusCode::CREATED, v, true),
            None => Answer::Refused(StatusCode::NOT_FOUND, "Not Found".into(), Value::Null),
        },
        "apps/get-authenticated" => {
            let mut v = example("integration");
            v["slug"] = json!("nightshift-test");
            v["name"] = json!("nightshift test");
            Answer::Done(StatusCode::OK, v, false)
        }
        "apps/list-installations" => {
            let items = state
                .installations
                .iter()
                .map(|(id, (account, _))| {
                    let mut v = example("base-installation-items");
                    v["id"] = json!(id);
                    v["account"]["login"] = json!(account);
                    v["app_slug"] = json!("nightshift-test");
                    v["suspended_at"] = Value::Null;
                    v
                })
                .collect();
            drop(state);
            page(inner, uri, items, None)
        }
        "apps/list-repos-accessible-to-installation" => {
            // Tokens are `ghs_fake{installation}_{n}`; a token minted for one repository sees that one.
            let token = params.get("token").cloned().unwrap_or_default();
            let Some(id) = token
                .strip_prefix("ghs_fake")
                .and_then(|t| t.split('_').next())
                .and_then(|id| id.parse::<u64>().ok())
            else {
                return Answer::Unexpected(
                    StatusCode::FORBIDDEN,
                    "listing an installation's repositories needs an installation token".into(),
                );
            };
            let scoped: Option<Vec<String>> = state
                .mints
                .iter()
                .find(|m| m.token == token)
                .and_then(|m| m.body["repositories"].as_array().cloned())
                .map(|r| {
                    r.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                });
            let repos = state
                .installations
                .get(&id)
                .map(|(_, repos)| repos.clone())
                .unwrap_or_default();
            let items = repos
                .iter()
                .filter(|r| {
                    scoped.as_ref().is_none_or(|names| {
                        names
                            .iter()
                            .any(|n| r.split('/').nth(1) == Some(n.as_str()))
                    })
                })
                .map(|r| {
                    let mut v =
                        super::SPEC.examples["repository-paginated-2"]["value"]["repositories"][0]
                            .clone();
                    rewrite_urls(&mut v, "octocat/Hello-World", r);
                    v["full_name"] = json!(r);
                    v["name"] = json!(r.split('/').nth(1).unwrap_or_default());
                    v["owner"]["login"] = json!(r.split('/').next().unwrap_or_default());
                    v
                })
                .collect();
            drop(state);
            page(inner, uri, items, Some("repositories"))
        }
        "apps/list-webhook-deliveries" => {
            let statuses = state.attempt_status.lock().unwrap().clone();
            let per_page = query
                .get("per_page")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(30)
                .clamp(1, 100);
            let before = query.get("cursor").and_then(|c| c.parse::<u64>().ok());
            let newest_first: Vec<&super::HookDelivery> = state
                .hook_deliveries
                .iter()
                .rev()
                .filter(|d| before.is_none_or(|b| d.id < b))
                .collect();
            let more = newest_first.len() > per_page;
            let items: Vec<Value> = newest_first
                .iter()
                .take(per_page)
                .map(|d| {
                    let status = statuses.get(&d.id).copied().unwrap_or(d.status_code);
                    let mut v = example("hook-delivery-items");
                    v["id"] = json!(d.id);
                    v["guid"] = json!(d.guid);
                    v["event"] = json!(d.event);
                    v["action"] = json!(d.action);
                    v["status_code"] = json!(status);
                    v["status"] = json!(if (200..300).contains(&status) {
                        "OK"
                    } else {
                        "failed"
                    });
                    v["delivered_at"] = json!(d.delivered_at);
                    v["redelivery"] = json!(d.redelivery);
                    v
                })
                .collect();
            let last = newest_first[..newest_first.len().min(per_page)]
                .last()
                .map(|d| d.id);
            drop(state);
            let mut response = axum::Json(Value::Array(items)).into_response();
            if let (true, Some(last)) = (more, last) {
                let link = format!(
                    "<{}/app/hook/deliveries?per_page={per_page}&cursor={last}>; rel=\"next\"",
                    inner.url
                );
                response
                    .headers_mut()
                    .insert("link", HeaderValue::from_str(&link).unwrap());
            }
            Answer::Page(response)
        }
        "apps/redeliver-webhook-delivery" => {
            let wanted = params
                .get("delivery_id")
                .and_then(|id| id.parse::<u64>().ok());
            let Some(original) = state
                .hook_deliveries
                .iter()
                .find(|d| Some(d.id) == wanted)
                .cloned()
            else {
                return Answer::Refused(StatusCode::NOT_FOUND, "Not Found".into(), Value::Null);
            };
            let Some((url, secret)) = state.webhook.clone() else {
                return Answer::Unexpected(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "the fake has no webhook to redeliver to (set_webhook)".into(),
                );
            };
            let id = state.id();
            state.hook_deliveries.push(super::HookDelivery {
                id,
                delivered_at: now(),
                redelivery: true,
                status_code: 0,
                ..original.clone()
            });
            // GitHub answers at once and delivers in the background.
            let statuses = state.attempt_status.clone();
            tokio::spawn(async move {
                let status = super::post_webhook(
                    &url,
                    &secret,
                    &original.event,
                    &original.guid,
                    &original.payload,
                )
                .await;
                statuses.lock().unwrap().insert(id, status);
            });
            Answer::Done(StatusCode::ACCEPTED, json!({}), true)
        }
        "apps/get-repo-installation" => {
            let installed = state
                .installations
                .iter()
                .find(|(_, (_, repos))| repos.iter().any(|r| r.eq_ignore_ascii_case(&repo)))
                .map(|(id, (account, _))| (*id, account.clone()));
            if !state.installations.is_empty() && installed.is_none() {
                return Answer::Refused(StatusCode::NOT_FOUND, "Not Found".into(), Value::Null);
            }
            let mut v = example("installation");
            v["id"] = json!(
                installed
                    .as_ref()
                    .map(|(id, _)| *id)
                    .or(state.installation_id)
                    .unwrap_or(1)
            );
            v["app_slug"] = json!("nightshift-test");
            v["account"]["login"] = json!(repo.split('/').next().unwrap_or_default());
            Answer::Done(StatusCode::OK, v, false)
        }
        "users/get-authenticated" if state.oauth.tokens.contains_key(&params["token"]) => {
            let login = state.oauth.tokens[&params["token"]].clone();
            let mut v =
                example("private-user-response-with-public-and-private-profile-information");
            v["login"] = json!(login);
            Answer::Done(StatusCode::OK, v, false)
        }
        "orgs/get-membership-for-authenticated-user" => {
            let Some(login) = state.oauth.tokens.get(&params["token"]).cloned() else {
                return Answer::Unexpected(
                    StatusCode::FORBIDDEN,
                    "Resource not accessible by integration (membership asked without a user's token)"
                        .into(),
                );
            };
            let org = params["org"].to_lowercase();
            match state
                .oauth
                .memberships
                .get(&(org.clone(), login.to_lowercase()))
            {
                Some(membership) => {
                    let mut v = example("org-membership");
                    v["state"] = json!(membership);
                    v["role"] = json!("member");
                    v["organization"]["login"] = json!(params["org"]);
                    v["user"]["login"] = json!(login);
                    Answer::Done(StatusCode::OK, v, false)
                }
                None => not_found(),
            }
        }
        "users/get-authenticated" => {
            if !matches!(inner.auth, super::ExpectedAuth::Token(_)) {
                return Answer::Unexpected(
                    StatusCode::FORBIDDEN,
                    "Resource not accessible by integration (GET /user with an installation token)"
                        .into(),
                );
            }
            let mut v =
                example("private-user-response-with-public-and-private-profile-information");
            v["login"] = json!(TOKEN_LOGIN);
            Answer::Done(StatusCode::OK, v, false)
        }
        "repos/get" => {
            let mut v = example("full-repository-default-response");
            rewrite_urls(&mut v, "octocat/Hello-World", &repo);
            v["full_name"] = json!(repo);
            v["name"] = json!(params["repo"]);
            v["owner"]["login"] = json!(params["owner"]);
            v["default_branch"] = json!("main");
            if let Some(url) = state.clone_urls.get(&repo) {
                v["clone_url"] = json!(url);
            }
            Answer::Done(StatusCode::OK, v, false)
        }
        "repos/get-collaborator-permission-level" => {
            let login = params["username"].to_lowercase();
            let permission = state
                .permissions
                .get(&(repo.clone(), login.clone()))
                .cloned()
                .unwrap_or_else(|| {
                    // A personal repository's owner administers it.
                    if params["owner"].eq_ignore_ascii_case(&login) {
                        "admin".to_owned()
                    } else {
                        "read".to_owned()
                    }
                });
            let mut v = example(
                "repository-collaborator-permission-response-if-user-has-admin-permissions",
            );
            v["permission"] = json!(permission);
            v["role_name"] = json!(permission);
            v["user"]["login"] = json!(params["username"]);
            Answer::Done(StatusCode::OK, v, false)
        }
        "git/get-ref" => {
            let Some(branch) = params["ref"].strip_prefix("heads/") else {
                return not_found();
            };
            match state.branches.get(&(repo.clone(), branch.to_owned())) {
                Some(sha) => {
                    let mut v = example("git-ref");
                    rewrite_urls(&mut v, "octocat/Hello-World", &repo);
                    v["ref"] = json!(format!("refs/heads/{branch}"));
                    v["object"]["sha"] = json!(sha);
                    Answer::Done(StatusCode::OK, v, false)
                }
                None => not_found(),
            }
        }
        "git/create-ref" => {
            let name = text("ref").unwrap_or_default();
            let Some(branch) = name.strip_prefix("refs/heads/") else {
                return invalid("Reference name must start with 'refs/'.", Value::Null);
            };
            let key = (repo.clone(), branch.to_owned());
            if state.branches.contains_key(&key) {
                return invalid("Reference already exists", Value::Null);
            }
            let sha = text("sha").unwrap_or_default();
            state.branches.insert(key, sha.clone());
            let mut v = example("git-ref");
            rewrite_urls(&mut v, "octocat/Hello-World", &repo);
            v["ref"] = json!(name);
            v["object"]["sha"] = json!(sha);
            Answer::Done(StatusCode::CREATED, v, true)
        }

        "issues/create-comment" => {
            let number = numbers["issue_number"];
            if !exists(&state, number) {
                return not_found();
            }
            let id = state.id();
            let at = now();
            let comment = Comment {
                id,
                repo,
                number,
                body: text("body").unwrap_or_default(),
                author: own,
                created_at: at.clone(),
                updated_at: at,
                edits: vec![],
            };
            state.comments.push(comment.clone());
            Answer::Done(StatusCode::CREATED, comment_json(&comment), true)
        }
        "issues/get-comment" | "issues/update-comment" => {
            let id = numbers["comment_id"];
            let Some(comment) = state
                .comments
                .iter_mut()
                .find(|c| c.repo == repo && c.id == id)
            else {
                return not_found();
            };
            if op == "issues/get-comment" {
                return Answer::Done(StatusCode::OK, comment_json(comment), false);
            }
            let new = text("body").unwrap_or_default();
            let before = std::mem::replace(&mut comment.body, new);
            comment.edits.push(edit(&own, &before));
            comment.updated_at = now();
            Answer::Done(StatusCode::OK, comment_json(comment), true)
        }
        "issues/list-comments" => {
            let number = numbers["issue_number"];
            if !exists(&state, number) {
                return not_found();
            }
            let items = state
                .comments
                .iter()
                .filter(|c| c.repo == repo && c.number == number)
                .map(comment_json)
                .collect();
            drop(state);
            page(inner, uri, items, None)
        }
        "reactions/create-for-issue-comment" | "reactions/list-for-issue-comment" => {
            let id = numbers["comment_id"];
            if !state.comments.iter().any(|c| c.repo == repo && c.id == id) {
                return not_found();
            }
            if op == "reactions/list-for-issue-comment" {
                let content = query.get("content");
                let items = state
                    .reactions
                    .iter()
                    .filter(|r| r.repo == repo && r.comment_id == id)
                    .filter(|r| content.is_none_or(|c| *c == r.content))
                    .map(reaction_json)
                    .collect();
                drop(state);
                return page(inner, uri, items, None);
            }
            let content = text("content").unwrap_or_default();
            if let Some(r) = state.reactions.iter().find(|r| {
                r.repo == repo && r.comment_id == id && r.content == content && r.user == own
            }) {
                return Answer::Done(StatusCode::OK, reaction_json(r), false);
            }
            let reaction = Reaction {
                id: state.id(),
                repo,
                comment_id: id,
                content,
                user: own,
            };
            state.reactions.push(reaction.clone());
            Answer::Done(StatusCode::CREATED, reaction_json(&reaction), true)
        }
        "issues/create" => {
            let number = state.number(&repo);
            let at = now();
            let issue = Issue {
                number,
                repo: repo.clone(),
                title: match &body["title"] {
                    Value::Number(n) => n.to_string(),
                    other => other.as_str().unwrap_or_default().to_owned(),
                },
                body: text("body").unwrap_or_default(),
                labels: label_names(&body["labels"]),
                state: "open".into(),
                author: own,
                created_at: at.clone(),
                updated_at: at,
            };
            state.issues.push(issue.clone());
            state.created.push(Created {
                operation: op.into(),
                repo,
                body: body.clone(),
            });
            Answer::Done(StatusCode::CREATED, issue_json(&issue), true)
        }
        "issues/get" | "issues/update" | "issues/add-labels" => {
            let number = numbers["issue_number"];
            let write = op != "issues/get";
            if let Some(issue) = state
                .issues
                .iter_mut()
                .find(|i| i.repo == repo && i.number == number)
            {
                if op == "issues/update" {
                    if let Some(t) = text("title") {
                        issue.title = t;
                    }
                    if let Some(b) = text("body") {
                        issue.body = b;
                    }
                    if let Some(s) = text("state") {
                        issue.state = s;
                    }
                    if body.get("labels").is_some() {
                        issue.labels = label_names(&body["labels"]);
                    }
                }
                if op == "issues/add-labels" {
                    for label in label_names(body) {
                        if !issue.labels.contains(&label) {
                            issue.labels.push(label);
                        }
                    }
                    let labels = issue.labels.iter().map(|l| label_json(&repo, l)).collect();
                    return Answer::Done(StatusCode::OK, Value::Array(labels), true);
                }
                if write {
                    issue.updated_at = now();
                }
                return Answer::Done(StatusCode::OK, issue_json(issue), write);
            }
            if let Some(pull) = state
                .pulls
                .iter_mut()
                .find(|p| p.repo == repo && p.number == number)
            {
                if op == "issues/update" {
                    if let Some(t) = text("title") {
                        pull.title = t;
                    }
                    if let Some(b) = text("body") {
                        pull.body = b;
                    }
                    if let Some(s) = text("state") {
                        pull.state = s;
                    }
                    if body.get("labels").is_some() {
                        pull.labels = label_names(&body["labels"]);
                    }
                }
                if op == "issues/add-labels" {
                    for label in label_names(body) {
                        if !pull.labels.contains(&label) {
                            pull.labels.push(label);
                        }
                    }
                    let labels = pull.labels.iter().map(|l| label_json(&repo, l)).collect();
                    return Answer::Done(StatusCode::OK, Value::Array(labels), true);
                }
                if write {
                    pull.updated_at = now();
                }
                return Answer::Done(StatusCode::OK, pull_issue_json(pull), write);
            }
            not_found()
        }
        "issues/list-for-repo" => {
            let wanted_state = query.get("state").map(String::as_str).unwrap_or("open");
            let creator = query.get("creator");
            let labels: Vec<&str> = query
                .get("labels")
                .map(|l| l.split(',').filter(|l| !l.is_empty()).collect())
                .unwrap_or_default();
            let keep = |state: &str, author: &str, have: &[String]| {
                (wanted_state == "all" || wanted_state == state)
                    && creator.is_none_or(|c| c.eq_ignore_ascii_case(author))
                    && labels.iter().all(|l| have.iter().any(|h| h == l))
            };
            let mut items: Vec<(u64, Value)> = state
                .issues
                .iter()
                .filter(|i| i.repo == repo && keep(&i.state, &i.author, &i.labels))
                .map(|i| (i.number, issue_json(i)))
                .chain(
                    state
                        .pulls
                        .iter()
                        .filter(|p| p.repo == repo && keep(&p.state, &p.author, &p.labels))
                        .map(|p| (p.number, pull_issue_json(p))),
                )
                .collect();
            // Newest first, as GitHub's default `sort=created&direction=desc`.
            items.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
            if query.get("direction").is_some_and(|d| d == "asc") {
                items.reverse();
            }
            drop(state);
            page(
                inner,
                uri,
                items.into_iter().map(|(_, v)| v).collect(),
                None,
            )
        }

        "pulls/create" => {
            let head = text("head").unwrap_or_default();
            let base = text("base").unwrap_or_default();
            let owner = repo.split('/').next().unwrap_or_default().to_owned();
            let (head_owner, branch) = match head.split_once(':') {
                Some((o, b)) => (o.to_owned(), b.to_owned()),
                None => (owner.clone(), head.clone()),
            };
            let head_repo = format!("{head_owner}/{}", params["repo"]);
            if state.pulls.iter().any(|p| {
                p.repo == repo && p.state == "open" && p.head == branch && p.head_repo == head_repo
            }) {
                return invalid(
                    "Validation Failed",
                    json!([{ "resource": "PullRequest", "code": "custom",
                             "message": format!("A pull request already exists for {head_owner}:{branch}.") }]),
                );
            }
            if branch == base && head_repo == repo {
                return invalid(
                    "Validation Failed",
                    json!([{ "resource": "PullRequest", "code": "custom",
                             "message": format!("No commits between {base} and {branch}") }]),
                );
            }
            let number = state.number(&repo);
            let at = now();
            let pull = Pull {
                number,
                repo: repo.clone(),
                title: text("title").unwrap_or_default(),
                head_sha: state.branch_sha(&head_repo, &branch),
                head: branch,
                base,
                body: text("body").unwrap_or_default(),
                head_repo,
                draft: body["draft"] == true,
                state: "open".into(),
                merged: false,
                author: own,
                labels: vec![],
                created_at: at.clone(),
                updated_at: at,
            };
            state.pulls.push(pull.clone());
            state.opened.push((pull.repo.clone(), pull.number));
            Answer::Done(StatusCode::CREATED, pull_json(&pull, "pull-request"), true)
        }
        "pulls/get" | "pulls/update" => {
            let number = numbers["pull_number"];
            let Some(pull) = state
                .pulls
                .iter_mut()
                .find(|p| p.repo == repo && p.number == number)
            else {
                return not_found();
            };
            if op == "pulls/get" {
                return Answer::Done(StatusCode::OK, pull_json(pull, "pull-request"), false);
            }
            if let Some(t) = text("title") {
                pull.title = t;
            }
            if let Some(b) = text("body") {
                pull.body = b;
            }
            if let Some(s) = text("state") {
                pull.state = s;
            }
            if let Some(b) = text("base") {
                pull.base = b;
            }
            pull.updated_at = now();
            Answer::Done(StatusCode::OK, pull_json(pull, "pull-request"), true)
        }
        "pulls/list" => {
            let wanted_state = query.get("state").map(String::as_str).unwrap_or("open");
            let mut items: Vec<&Pull> = state
                .pulls
                .iter()
                .filter(|p| p.repo == repo)
                .filter(|p| wanted_state == "all" || p.state == wanted_state)
                .filter(|p| {
                    // `head` is `user:ref-name`; GitHub ignores a value without the user.
                    query.get("head").is_none_or(|h| match h.split_once(':') {
                        Some((user, branch)) => {
                            p.head == branch
                                && p.head_repo.split('/').next().unwrap_or_default() == user
                        }
                        None => true,
                    })
                })
                .filter(|p| query.get("base").is_none_or(|b| *b == p.base))
                .collect();
            items.sort_by_key(|p| std::cmp::Reverse(p.number));
            if query.get("direction").is_some_and(|d| d == "asc") {
                items.reverse();
            }
            let items = items
                .into_iter()
                .map(|p| pull_json(p, "pull-request-simple-items"))
                .collect();
            drop(state);
            page(inner, uri, items, None)
        }
        "pulls/list-files" => {
            let number = numbers["pull_number"];
            let files = state
                .pull_files
                .get(&(repo.clone(), number))
                .cloned()
                .unwrap_or_default();
            if files.is_empty() && !exists(&state, number) {
                return not_found();
            }
            drop(state);
            let template = example("diff-entry-items");
            let items = files
                .iter()
                .map(|f: &PullFile| {
                    let mut entry = template.clone();
                    rewrite_urls(&mut entry, "octocat/Hello-World", &repo);
                    rewrite_urls(&mut entry, "file1.txt", &f.filename);
                    entry["filename"] = json!(f.filename);
                    entry["status"] = json!(f.status);
                    let added = f
                        .patch
                        .as_deref()
                        .map_or(0, |p| p.lines().filter(|l| l.starts_with('+')).count());
                    let removed = f
                        .patch
                        .as_deref()
                        .map_or(0, |p| p.lines().filter(|l| l.starts_with('-')).count());
                    entry["additions"] = json!(added);
                    entry["deletions"] = json!(removed);
                    entry["changes"] = json!(added + removed);
                    match &f.patch {
                        Some(p) => entry["patch"] = json!(p),
                        None => {
                            entry.as_object_mut().unwrap().remove("patch");
                        }
                    }
                    entry
                })
                .collect();
            page(inner, uri, items, None)
        }
        "pulls/list-reviews" => {
            let number = numbers["pull_number"];
            if !state
                .pulls
                .iter()
                .any(|p| p.repo == repo && p.number == number)
            {
                return not_found();
            }
            let items = state
                .reviews
                .iter()
                .filter(|r| r.repo == repo && r.number == number)
                .map(review_json)
                .collect();
            drop(state);
            page(inner, uri, items, None)
        }
        "pulls/create-review" => {
            let number = numbers["pull_number"];
            let Some(pull) = state
                .pulls
                .iter()
                .find(|p| p.repo == repo && p.number == number)
                .cloned()
            else {
                return not_found();
            };
            let event = text("event").unwrap_or_default();
            let review_body = text("body").unwrap_or_default();
            let comments = body["comments"].as_array().cloned().unwrap_or_default();
            if pull.state != "open" {
                return invalid(
                    "Unprocessable Entity",
                    json!(["Pull request is closed; it cannot be reviewed."]),
                );
            }
            let commit_id = text("commit_id").unwrap_or_else(|| pull.head_sha.clone());
            if commit_id != pull.head_sha {
                return invalid(
                    "Unprocessable Entity",
                    json!([format!(
                        "commit_id {commit_id} is not the head of the pull request ({})",
                        pull.head_sha
                    )]),
                );
            }
            if matches!(event.as_str(), "REQUEST_CHANGES" | "COMMENT")
                && review_body.trim().is_empty()
                && comments.is_empty()
            {
                return invalid(
                    "Unprocessable Entity",
                    json!([format!(
                        "Review Can not {} without a body",
                        event.to_lowercase().replace('_', " ")
                    )]),
                );
            }
            if matches!(event.as_str(), "APPROVE" | "REQUEST_CHANGES") && pull.author == own {
                return invalid(
                    "Unprocessable Entity",
                    json!([format!(
                        "Review Can not {} your own pull request",
                        if event == "APPROVE" {
                            "approve"
                        } else {
                            "request changes on"
                        }
                    )]),
                );
            }
            let files = state
                .pull_files
                .get(&(repo.clone(), number))
                .cloned()
                .unwrap_or_default();
            for comment in &comments {
                let path = comment["path"].as_str().unwrap_or_default();
                let Some(file) = files.iter().find(|f| f.filename == path) else {
                    return invalid(
                        "Unprocessable Entity",
                        json!(["Path could not be resolved"]),
                    );
                };
                let lines = file.patch.as_deref().map(diff_lines).unwrap_or_default();
                let in_diff = |line: &Value, side: &Value| {
                    let Some(line) = line.as_u64() else {
                        return false;
                    };
                    match side.as_str().unwrap_or("RIGHT") {
                        "LEFT" => lines.left.contains(&line),
                        _ => lines.right.contains(&line),
                    }
                };
                let placed = if let Some(position) = comment["position"].as_u64() {
                    position >= 1 && position <= lines.positions
                } else {
                    in_diff(&comment["line"], &comment["side"])
                        && (comment["start_line"].is_null()
                            || (in_diff(
                                &comment["start_line"],
                                if comment["start_side"].is_null() {
                                    &comment["side"]
                                } else {
                                    &comment["start_side"]
                                },
                            ) && comment["start_line"].as_u64() < comment["line"].as_u64()))
                };
                if !placed {
                    return invalid(
                        "Unprocessable Entity",
                        json!(["Pull request review thread line must be part of the diff"]),
                    );
                }
            }
            let review = Review {
                id: state.id(),
                repo: repo.clone(),
                number,
                commit_id,
                body: review_body,
                event,
                comments,
                author: own,
                edits: vec![],
            };
            state.reviews.push(review.clone());
            state.created.push(Created {
                operation: op.into(),
                repo,
                body: body.clone(),
            });
            Answer::Done(StatusCode::OK, review_json(&review), true)
        }
        "pulls/update-review" => {
            let number = numbers["pull_number"];
            let id = numbers["review_id"];
            let Some(review) = state
                .reviews
                .iter_mut()
                .find(|r| r.repo == repo && r.number == number && r.id == id)
            else {
                return not_found();
            };
            let before = std::mem::replace(&mut review.body, text("body").unwrap_or_default());
            review.edits.push(edit(&own, &before));
            Answer::Done(StatusCode::OK, review_json(review), true)
        }

        "checks/create" => {
            let head_sha = text("head_sha").unwrap_or_default();
            if head_sha.len() != 40 || !head_sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid(
                    "Validation Failed",
                    json!([{ "resource": "CheckRun", "code": "invalid", "field": "head_sha",
                             "message": format!("No commit found for SHA: {head_sha}") }]),
                );
            }
            let conclusion = text("conclusion");
            let status = if conclusion.is_some() {
                "completed".to_owned()
            } else {
                text("status").unwrap_or_else(|| "queued".into())
            };
            let run = CheckRun {
                id: state.id(),
                repo: repo.clone(),
                name: text("name").unwrap_or_default(),
                head_sha,
                external_id: text("external_id"),
                status,
                conclusion,
                details_url: text("details_url"),
                output: body["output"].clone(),
                annotations: body["output"]["annotations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                author: own,
                history: vec![body.clone()],
            };
            state.check_runs.push(run.clone());
            state.created.push(Created {
                operation: op.into(),
                repo,
                body: body.clone(),
            });
            Answer::Done(StatusCode::CREATED, check_run_json(&run), true)
        }
        "checks/get" | "checks/update" => {
            let id = numbers["check_run_id"];
            let Some(run) = state
                .check_runs
                .iter_mut()
                .find(|c| c.repo == repo && c.id == id)
            else {
                return not_found();
            };
            if op == "checks/get" {
                return Answer::Done(StatusCode::OK, check_run_json(run), false);
            }
            if let Some(name) = text("name") {
                run.name = name;
            }
            if let Some(e) = text("external_id") {
                run.external_id = Some(e);
            }
            if let Some(d) = text("details_url") {
                run.details_url = Some(d);
            }
            if let Some(s) = text("status") {
                run.status = s;
            }
            if let Some(c) = text("conclusion") {
                run.conclusion = Some(c);
                run.status = "completed".into();
            }
            if body["output"].is_object() {
                let annotations = body["output"]["annotations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                run.annotations.extend(annotations);
                run.output = body["output"].clone();
            }
            run.history.push(body.clone());
            Answer::Done(StatusCode::OK, check_run_json(run), true)
        }
        "checks/list-for-ref" => {
            let reference = params["ref"].clone();
            let sha = if reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
                reference
            } else {
                state.branch_sha(&repo, reference.trim_start_matches("heads/"))
            };
            let name = query.get("check_name");
            let status = query.get("status");
            let mut runs: Vec<&CheckRun> = state
                .check_runs
                .iter()
                .filter(|c| c.repo == repo && c.head_sha == sha)
                .filter(|c| name.is_none_or(|n| *n == c.name))
                .filter(|c| status.is_none_or(|s| *s == c.status))
                .collect();
            runs.reverse(); // newest first
            if query.get("filter").is_none_or(|f| f == "latest") {
                let mut seen = std::collections::HashSet::new();
                runs.retain(|c| seen.insert(c.name.clone()));
            }
            let items = runs.into_iter().map(check_run_json).collect();
            drop(state);
            page(inner, uri, items, Some("check_runs"))
        }
        other => Answer::Unexpected(
            StatusCode::NOT_IMPLEMENTED,
            format!("operation {other} is described but the fake does not implement it"),
        ),
    }
}
