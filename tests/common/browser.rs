//! A real browser for tests: Chromium, headless, driven over WebDriver by `chromedriver` (Debian's
//! `chromium` and `chromium-driver`; scripts/test.sh installs them). Each [`Browser`] starts its own
//! chromedriver on a free loopback port with a fresh profile folder, and kills it (and the Chromium it
//! started: one process group) when dropped. [`Browser::screenshot`] keeps PNGs under
//! `target/test-artifacts/`.
//!
//! A test binary includes it with `#[path = "common/browser.rs"] mod browser;` (beside `mod common;`), so
//! only the tests that drive a browser link the WebDriver client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use fantoccini::Locator;
use fantoccini::{Client, ClientBuilder};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// A free loopback port (bound and released: chromedriver binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "none of {names:?} is installed: run scripts/test.sh, or apt-get install chromium chromium-driver"
    )
}

/// Where screenshots go: `target/test-artifacts/` of the target folder the test binary was built in.
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/NAME-HASH
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let chromium = which(&["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = which(&["chromedriver"]);
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so the Chromium it starts is killed with it.
                .process_group(0)
                .spawn()
                .expect("starting chromedriver")
        };
        let mut browser_args = vec![
            "--headless=new".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-extensions".into(),
            "--window-size=1280,900".into(),
        ];
        // Chromium refuses to start as root with its sandbox on (tests run as root in CI's containers). The
        // browser only ever loads our own pages on loopback (nightshift and the fake GitHub), never content
        // from the internet, so its sandbox protects nothing here.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            browser_args.push("--no-sandbox".into());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": browser_args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut browser = None;
        // chromedriver answers once it listens; each try is one connection attempt.
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities);
        for _ in 0..200 {
            match builder.connect(&url).await {
                Ok(client) => {
                    browser = Some(client);
                    break;
                }
                Err(fantoccini::error::NewSessionError::Failed(_))
                | Err(fantoccini::error::NewSessionError::FailedC(_))
                | Err(fantoccini::error::NewSessionError::Lost(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("starting a Chromium session: {e}"),
            }
        }
        let client = browser.expect("chromedriver did not start listening");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Saves a screenshot of the page as `target/test-artifacts/NAME.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The page's URL.
    pub async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// Clicks the element `css` selects. A page that reloads itself (a job page when its job ends) can
    /// replace the element between finding and clicking it: then the new page's is found and clicked.
    pub async fn click(&self, css: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"));
            match element.click().await {
                Ok(()) => return,
                Err(e) if replaced(&e) && std::time::Instant::now() < deadline => {}
                Err(e) => panic!("clicking `{css}`: {e}"),
            }
        }
    }

    /// Waits until the element `css` selects is on the page; returns its text.
    pub async fn wait_for(&self, css: &str) -> String {
        let element = self
            .client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("`{css}` never appeared: {e}"));
        match element.text().await {
            Ok(text) => text,
            // The page reloaded itself meanwhile: the new page's element.
            Err(e) if replaced(&e) => Box::pin(self.wait_for(css)).await,
            Err(e) => panic!("reading `{css}`: {e}"),
        }
    }

    /// Ends the session (Chromium quits) and stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Whether `e` says the element was replaced (the page reloaded itself) between finding and using it.
/// Chromium says so as a stale element reference, or, when the node went during the command itself, as an
/// "unknown error" of its inspector ("Node with given id does not belong to the document", seen in CI).
fn replaced(e: &fantoccini::error::CmdError) -> bool {
    if e.is_stale_element_reference() {
        return true;
    }
    let message = e.to_string();
    message.contains("does not belong to the document")
        || message.contains("is detached from document")
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.driver.id() as i32;
        // SAFETY: kill(2) on the process group of our own child; no memory is involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}
