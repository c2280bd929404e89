//! GitHub's side of the App manifest flow: the "create App" page at the web URL
//! (`/settings/apps/new`, `/organizations/ORG/settings/apps/new`) that takes the manifest form POST, shows a
//! confirm button and sends the browser to `redirect_url?code=…&state=…`; `apps/create-from-manifest` (in
//! ops.rs) turns the code into the App once. From then on the fake expects that App: JWTs signed with its key
//! (checked, not only read), installation tokens minted with them.
//!
//! Strict: a manifest that is not JSON, lacks a field GitHub needs (`url`, `hook_attributes.url`,
//! `redirect_url`), or whose permissions or events differ from `deploy/github-app-manifest.yml` is recorded as
//! unexpected and refused.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{FakeState, Inner, percent_decode, query_pairs};

/// The id of the App the manifest flow creates.
pub const MANIFEST_APP_ID: u64 = 5151;
/// Its private key (a fixture; its public half is `manifest-app-key.pub.pem`).
pub const MANIFEST_APP_KEY: &str = include_str!("../../fixtures/manifest-app-key.pem");
const MANIFEST_APP_PUBLIC_KEY: &str = include_str!("../../fixtures/manifest-app-key.pub.pem");
const DEPLOYED_MANIFEST: &str = include_str!("../../../deploy/github-app-manifest.yml");

/// An App made by the manifest flow.
#[derive(Clone, Debug)]
pub struct ManifestApp {
    pub id: u64,
    pub slug: String,
    pub webhook_secret: String,
    pub client_id: String,
    pub client_secret: String,
    /// The manifest it was made from.
    pub manifest: Value,
    /// The organization it was made for (None: the signed-in account).
    pub organization: Option<String>,
}

/// A manifest posted and not yet confirmed, or confirmed and not yet exchanged.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub manifest: Value,
    pub state: Option<String>,
    pub organization: Option<String>,
}

/// Why a manifest is refused, if it is.
fn refuse_manifest(manifest: &Value) -> Option<String> {
    let deployed: Value = serde_saphyr::from_str(DEPLOYED_MANIFEST).unwrap();
    for key in ["url", "redirect_url"] {
        match manifest[key].as_str() {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
            _ => {
                return Some(format!(
                    "`{key}` is missing or not a URL: {}",
                    manifest[key]
                ));
            }
        }
    }
    match manifest["hook_attributes"]["url"].as_str() {
        Some(u) if u.ends_with("/webhooks/github") => {}
        _ => {
            return Some(format!(
                "`hook_attributes.url` is not nightshift's webhook: {}",
                manifest["hook_attributes"]
            ));
        }
    }
    if manifest["hook_attributes"]["active"] != true {
        return Some("the webhook is not active".into());
    }
    if manifest["default_permissions"] != deployed["default_permissions"] {
        return Some(format!(
            "permissions {} differ from deploy/github-app-manifest.yml's {}",
            manifest["default_permissions"], deployed["default_permissions"]
        ));
    }
    let events = |v: &Value| -> Option<BTreeSet<String>> {
        v.as_array()?
            .iter()
            .map(|e| e.as_str().map(str::to_owned))
            .collect()
    };
    if events(&manifest["default_events"]).is_none()
        || events(&manifest["default_events"]) != events(&deployed["default_events"])
    {
        return Some(format!(
            "events {} differ from deploy/github-app-manifest.yml's {}",
            manifest["default_events"], deployed["default_events"]
        ));
    }
    if manifest["public"] != false {
        return Some("the App would be public".into());
    }
    if manifest["name"].as_str().is_none_or(str::is_empty) {
        return Some("no `name`".into());
    }
    None
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The web pages of the flow, or None for a path that is not one (an API call).
pub(super) fn page(inner: &Inner, method: &Method, uri: &Uri, body: &Bytes) -> Option<Response> {
    let path = uri.path();
    let organization = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", "settings", "apps", "new"] => None,
        ["", "organizations", org, "settings", "apps", "new"] => Some(percent_decode(org)),
        ["", "settings", "apps", "new", "confirm"] => return Some(confirm(inner, method, body)),
        // A browser on the "create App" page asks for its icon.
        ["", "favicon.ico"] => return Some(StatusCode::NOT_FOUND.into_response()),
        _ => return None,
    };
    let call = format!("{method} {uri}");
    let mut state = inner.state.lock().unwrap();
    state.calls.push(call.clone());
    if *method != Method::POST {
        state
            .unexpected
            .push(format!("{call}: the manifest flow POSTs the manifest"));
        return Some(html(StatusCode::METHOD_NOT_ALLOWED, "POST".into()));
    }
    let fields = form(body);
    let Some(manifest) = fields
        .iter()
        .find(|(k, _)| k == "manifest")
        .map(|(_, v)| v.clone())
    else {
        state
            .unexpected
            .push(format!("{call}: no `manifest` field"));
        return Some(html(StatusCode::UNPROCESSABLE_ENTITY, "no manifest".into()));
    };
    let manifest: Value = match serde_json::from_str(&manifest) {
        Ok(v) => v,
        Err(e) => {
            state
                .unexpected
                .push(format!("{call}: the manifest is not JSON: {e}"));
            return Some(html(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad manifest".into(),
            ));
        }
    };
    if let Some(why) = refuse_manifest(&manifest) {
        state
            .unexpected
            .push(format!("{call}: manifest refused: {why}"));
        return Some(html(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("<p>Invalid manifest: {}</p>", escape(&why)),
        ));
    }
    let st = query_pairs(uri)
        .into_iter()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v);
    let id = format!("p{}", state.id());
    state.manifests.push(manifest.clone());
    state.pending.insert(
        id.clone(),
        Pending {
            manifest: manifest.clone(),
            state: st,
            organization: organization.clone(),
        },
    );
    let owner = organization.as_deref().unwrap_or("your account");
    Some(html(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><title>Create GitHub App</title></head><body>\
             <h1>Create GitHub App for {owner}</h1><p>{name}: webhook {hook}</p>\
             <form method=\"post\" action=\"/settings/apps/new/confirm\">\
             <input type=\"hidden\" name=\"pending\" value=\"{id}\">\
             <button type=\"submit\" id=\"create-github-app\">Create GitHub App for {owner}</button></form>\
             </body></html>",
            owner = escape(owner),
            name = escape(manifest["name"].as_str().unwrap_or_default()),
            hook = escape(
                manifest["hook_attributes"]["url"]
                    .as_str()
                    .unwrap_or_default()
            ),
        ),
    ))
}

/// The confirm button: a code for the manifest, and the browser sent to `redirect_url`.
fn confirm(inner: &Inner, method: &Method, body: &Bytes) -> Response {
    let mut state = inner.state.lock().unwrap();
    let fields = form(body);
    let pending = fields
        .iter()
        .find(|(k, _)| k == "pending")
        .and_then(|(_, id)| state.pending.remove(id));
    let Some(pending) = pending.filter(|_| *method == Method::POST) else {
        state
            .unexpected
            .push("POST /settings/apps/new/confirm: no such manifest".into());
        return html(StatusCode::NOT_FOUND, "Not Found".into());
    };
    let code = format!("code{}x{}", state.id(), state.next_random() % 1_000_000);
    let mut location = format!(
        "{}?code={code}",
        pending.manifest["redirect_url"]
            .as_str()
            .unwrap_or_default()
    );
    if let Some(st) = &pending.state {
        location.push_str(&format!(
            "&state={}",
            percent_encoding::utf8_percent_encode(st, percent_encoding::NON_ALPHANUMERIC)
        ));
    }
    state.codes.insert(code, pending);
    let mut response = StatusCode::FOUND.into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
    response
}

/// `apps/create-from-manifest`: the App, once per code.
pub(super) fn convert(state: &mut FakeState, code: &str) -> Option<(ManifestApp, Value)> {
    let pending = state.codes.remove(code)?;
    let secret = format!("whsec-{:016x}", state.next_random());
    let app = ManifestApp {
        id: MANIFEST_APP_ID,
        slug: "nightshift-test".into(),
        webhook_secret: secret,
        client_id: "Iv1.manifestclient".into(),
        client_secret: format!("{:040x}", state.next_random() as u128 * 7919),
        manifest: pending.manifest.clone(),
        organization: pending.organization.clone(),
    };
    let mut v = super::example("integration-from-manifest");
    v["id"] = json!(app.id);
    v["slug"] = json!(app.slug);
    v["name"] = pending.manifest["name"].clone();
    v["html_url"] = json!(format!("https://github.com/apps/{}", app.slug));
    v["pem"] = json!(MANIFEST_APP_KEY);
    v["webhook_secret"] = json!(app.webhook_secret);
    v["client_id"] = json!(app.client_id);
    v["client_secret"] = json!(app.client_secret);
    v["permissions"] = pending.manifest["default_permissions"].clone();
    v["events"] = pending.manifest["default_events"].clone();
    if let Some(org) = &pending.organization {
        v["owner"]["login"] = json!(org);
    }
    state.manifest_app = Some(app.clone());
    Some((app, v))
}

/// Whether `token` is a JWT of the App the manifest flow made, signed with its key and not expired.
pub(super) fn valid_app_jwt(token: &str, app: &ManifestApp) -> bool {
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(MANIFEST_APP_PUBLIC_KEY.as_bytes()).unwrap();
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    match jsonwebtoken::decode::<Value>(token, &key, &validation) {
        Ok(data) => {
            let iss = &data.claims["iss"];
            iss.as_str() == Some(app.id.to_string().as_str()) || iss.as_u64() == Some(app.id)
        }
        Err(_) => false,
    }
}
