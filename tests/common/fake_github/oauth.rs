//! GitHub's side of "Sign in with GitHub" through an App's OAuth client (the dashboard): the authorize page
//! at the web URL (`GET /login/oauth/authorize`, shown to whoever [`super::FakeGitHub::sign_in_as`] made the
//! browser's GitHub user, with a button that sends the browser to `redirect_uri?code&state`), the code
//! exchange (`POST /login/oauth/access_token`), and the user's token, which the API accepts for
//! `GET /user` and `GET /user/memberships/orgs/{org}` only.
//!
//! Strict: an unknown client, a `redirect_uri` that is not the client's callback URL, a missing `state`, a
//! wrong client secret, or the user's token used for anything else is recorded as unexpected. A code works
//! once (a second exchange answers GitHub's `bad_verification_code`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Inner, percent_decode, query_pairs};

#[derive(Default)]
pub(super) struct OAuth {
    /// Client id → (secret, callback URL).
    pub clients: HashMap<String, (String, String)>,
    /// The browser's GitHub user (who the authorize page signs in).
    pub user: Option<String>,
    /// (org, lower-case login) → membership state (`active`, `pending`).
    pub memberships: HashMap<(String, String), String>,
    /// Code → (client id, login, redirect_uri).
    pub codes: HashMap<String, (String, String, String)>,
    /// User token → login.
    pub tokens: HashMap<String, String>,
    /// Every code exchanged (for tests: none twice).
    pub exchanged: Vec<String>,
}

/// The operations a user's token may be used for (all the dashboard asks).
pub(super) const USER_TOKEN_OPERATIONS: &[&str] = &[
    "users/get-authenticated",
    "orgs/get-membership-for-authenticated-user",
];

fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn field(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// The OAuth client of the App the manifest flow made, if there is one (its callback URL from the
/// manifest's `callback_urls`).
fn manifest_client(state: &super::FakeState) -> Option<(String, (String, String))> {
    let app = state.manifest_app.as_ref()?;
    let callback = app.manifest["callback_urls"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Some((app.client_id.clone(), (app.client_secret.clone(), callback)))
}

fn client(state: &super::FakeState, id: &str) -> Option<(String, String)> {
    state.oauth.clients.get(id).cloned().or_else(|| {
        manifest_client(state)
            .filter(|(c, _)| c == id)
            .map(|(_, v)| v)
    })
}

/// The web endpoints of the flow, or None for a path that is not one.
pub(super) fn page(
    inner: &Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let path = uri.path();
    if !matches!(
        path,
        "/login/oauth/authorize" | "/login/oauth/authorize/confirm" | "/login/oauth/access_token"
    ) {
        return None;
    }
    let call = format!("{method} {}", path);
    let mut state = inner.state.lock().unwrap();
    state.calls.push(call.clone());
    match (method.clone(), path) {
        (Method::GET, "/login/oauth/authorize") => {
            let query = query_pairs(uri);
            let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let (Some(client_id), Some(redirect_uri)) = (get("client_id"), get("redirect_uri"))
            else {
                state
                    .unexpected
                    .push(format!("{call}: no client_id or redirect_uri"));
                return Some(html(StatusCode::BAD_REQUEST, "bad request".into()));
            };
            let Some((_, callback)) = client(&state, &client_id) else {
                state
                    .unexpected
                    .push(format!("{call}: unknown OAuth client `{client_id}`"));
                return Some(html(StatusCode::NOT_FOUND, "Not Found".into()));
            };
            if redirect_uri != callback {
                state.unexpected.push(format!(
                    "{call}: redirect_uri `{redirect_uri}` is not the App's callback URL `{callback}`"
                ));
                return Some(html(
                    StatusCode::BAD_REQUEST,
                    "<p>The redirect_uri MUST match the registered callback URL for this application.</p>"
                        .into(),
                ));
            }
            let Some(st) = get("state").filter(|s| !s.is_empty()) else {
                state.unexpected.push(format!(
                    "{call}: no `state` (a sign-in without one can be forged)"
                ));
                return Some(html(StatusCode::BAD_REQUEST, "no state".into()));
            };
            let Some(user) = state.oauth.user.clone() else {
                return Some(html(
                    StatusCode::OK,
                    "<p id=\"github-sign-in\">Sign in to GitHub to continue.</p>".into(),
                ));
            };
            Some(html(
                StatusCode::OK,
                format!(
                    "<!doctype html><html><head><title>Authorize application</title></head><body>\
                     <h1>Authorize nightshift</h1><p id=\"github-user\">Signed in as {user}</p>\
                     <form method=\"post\" action=\"/login/oauth/authorize/confirm\">\
                     <input type=\"hidden\" name=\"client_id\" value=\"{client}\">\
                     <input type=\"hidden\" name=\"redirect_uri\" value=\"{redirect}\">\
                     <input type=\"hidden\" name=\"state\" value=\"{st}\">\
                     <button type=\"submit\" id=\"authorize-github\">Authorize</button></form></body></html>",
                    user = escape(&user),
                    client = escape(&client_id),
                    redirect = escape(&redirect_uri),
                    st = escape(&st),
                ),
            ))
        }
        (Method::POST, "/login/oauth/authorize/confirm") => {
            let fields = form(body);
            let (Some(client_id), Some(redirect_uri), Some(st), Some(user)) = (
                field(&fields, "client_id"),
                field(&fields, "redirect_uri"),
                field(&fields, "state"),
                state.oauth.user.clone(),
            ) else {
                state.unexpected.push(format!("{call}: incomplete form"));
                return Some(html(StatusCode::BAD_REQUEST, "bad request".into()));
            };
            let code = format!("oauth{}x{}", state.id(), state.next_random() % 1_000_000);
            state
                .oauth
                .codes
                .insert(code.clone(), (client_id, user, redirect_uri.clone()));
            let location = format!(
                "{redirect_uri}?code={code}&state={}",
                percent_encoding::utf8_percent_encode(&st, percent_encoding::NON_ALPHANUMERIC)
            );
            let mut response = StatusCode::FOUND.into_response();
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
            Some(response)
        }
        (Method::POST, "/login/oauth/access_token") => {
            let mut fields = form(body);
            fields.extend(query_pairs(uri));
            let wants_json = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/json"));
            if !wants_json {
                state.unexpected.push(format!(
                    "{call}: without `Accept: application/json` GitHub answers form-encoded"
                ));
            }
            let (Some(client_id), Some(secret), Some(code)) = (
                field(&fields, "client_id"),
                field(&fields, "client_secret"),
                field(&fields, "code"),
            ) else {
                state
                    .unexpected
                    .push(format!("{call}: no client_id, client_secret or code"));
                return Some(
                    (
                        StatusCode::OK,
                        axum::Json(json!({"error": "incorrect_client_credentials"})),
                    )
                        .into_response(),
                );
            };
            match client(&state, &client_id) {
                Some((good, _)) if good == secret => {}
                _ => {
                    state
                        .unexpected
                        .push(format!("{call}: wrong client credentials"));
                    return Some(
                        (
                            StatusCode::OK,
                            axum::Json(json!({"error": "incorrect_client_credentials"})),
                        )
                            .into_response(),
                    );
                }
            }
            let Some((for_client, login, redirect_uri)) = state.oauth.codes.remove(&code) else {
                return Some(
                    (
                        StatusCode::OK,
                        axum::Json(json!({
                            "error": "bad_verification_code",
                            "error_description": "The code passed is incorrect or expired."
                        })),
                    )
                        .into_response(),
                );
            };
            if for_client != client_id
                || field(&fields, "redirect_uri").is_some_and(|r| r != redirect_uri)
            {
                state.unexpected.push(format!(
                    "{call}: the code was given to another client or redirect_uri"
                ));
                return Some(
                    (
                        StatusCode::OK,
                        axum::Json(json!({"error": "bad_verification_code"})),
                    )
                        .into_response(),
                );
            }
            let token = format!("ghu_fake{}", state.next_random() % 1_000_000_000);
            state.oauth.tokens.insert(token.clone(), login);
            state.oauth.exchanged.push(code);
            Some(
                (
                    StatusCode::OK,
                    axum::Json(json!({"access_token": token, "token_type": "bearer", "scope": ""})),
                )
                    .into_response(),
            )
        }
        _ => {
            state.unexpected.push(format!("{call}: wrong method"));
            Some(html(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed".into(),
            ))
        }
    }
}

impl super::FakeGitHub {
    /// Registers an OAuth client (an App made by hand): its id, secret and callback URL.
    pub fn add_oauth_client(&self, id: &str, secret: &str, callback: &str) {
        self.state()
            .oauth
            .clients
            .insert(id.to_owned(), (secret.to_owned(), callback.to_owned()));
    }

    /// The browser's GitHub user from now on: who the authorize page signs in.
    pub fn sign_in_as(&self, login: &str) {
        self.state().oauth.user = Some(login.to_owned());
    }

    /// Makes `login` a member of `org` (`active` or `pending`).
    pub fn add_member(&self, org: &str, login: &str, membership: &str) {
        self.state().oauth.memberships.insert(
            (org.to_lowercase(), login.to_lowercase()),
            membership.to_owned(),
        );
    }

    /// The user tokens handed out, and whose they are.
    pub fn user_tokens(&self) -> Vec<(String, String)> {
        self.state()
            .oauth
            .tokens
            .iter()
            .map(|(t, l)| (t.clone(), l.clone()))
            .collect()
    }
}
