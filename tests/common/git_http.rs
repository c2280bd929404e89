//! The test remote over git's smart HTTP protocol (`git http-backend` behind a small server on loopback), so
//! tests see the credentials git sends: every request must carry `Authorization: Basic` with an installation
//! token the fake GitHub minted and that is still live, as GitHub's git server requires; anything else is a
//! 401 and recorded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::io::AsyncWriteExt;

use super::FakeGitHub;

/// One request git made.
#[derive(Clone, Debug)]
pub struct GitRequest {
    /// `git-upload-pack` (fetch) or `git-receive-pack` (push).
    pub service: String,
    /// The token it presented, if any.
    pub token: Option<String>,
    /// Whether the token was live when it was presented.
    pub accepted: bool,
}

struct Served {
    root: PathBuf,
    github: FakeGitHub,
    requests: Mutex<Vec<GitRequest>>,
}

pub struct GitHttp {
    pub url: String,
    served: Arc<Served>,
}

impl GitHttp {
    /// Serves the bare repositories under `root` (receive-pack enabled) at `http://127.0.0.1:PORT/NAME`.
    pub async fn start(root: PathBuf, github: FakeGitHub) -> GitHttp {
        let served = Arc::new(Served {
            root,
            github,
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        GitHttp { url, served }
    }

    pub fn requests(&self) -> Vec<GitRequest> {
        self.served.requests.lock().unwrap().clone()
    }
}

fn token_of(headers: &HeaderMap) -> Option<String> {
    let basic = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.strip_prefix("x-access-token:").map(str::to_owned)
}

async fn serve(
    State(served): State<Arc<Served>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default().to_owned();
    let service = if uri.path().ends_with("/git-receive-pack") || query.contains("git-receive-pack")
    {
        "git-receive-pack"
    } else {
        "git-upload-pack"
    };
    let token = token_of(&headers);
    let accepted = token
        .as_deref()
        .is_some_and(|t| served.github.token_is_live(t));
    served.requests.lock().unwrap().push(GitRequest {
        service: service.to_owned(),
        token,
        accepted,
    });
    if !accepted {
        return (
            StatusCode::UNAUTHORIZED,
            "a live installation token is required",
        )
            .into_response();
    }
    let mut cgi = tokio::process::Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &served.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", &query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "CONTENT_TYPE",
            headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    if let Some(encoding) = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        cgi.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let mut child = cgi.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    // CGI output: headers, a blank line, the body.
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .expect("git http-backend answered with headers");
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value[..3]
                .parse::<u16>()
                .map(|c| StatusCode::from_u16(c).unwrap())
                .unwrap();
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .status(status)
        .body(axum::body::Body::from(
            out.stdout[split.0 + split.1..].to_vec(),
        ))
        .unwrap()
}
