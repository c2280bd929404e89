//! The model gateway in-process, for tests that talk to it directly: a config with the given agent profiles
//! (YAML lines under `agents:`, where `{upstream}` is the fake model's URL), `gpt-5.5` priced, and `REAL` as
//! the one model key the service holds.

use std::sync::Arc;

use nightshift::config::{Config, ConfigSource};
use nightshift::gateway::{Gateway, JobAccess};
use nightshift::ids::JobId;

pub async fn start(agents: &str, real_key: &str) -> (tempfile::TempDir, Config, Arc<Gateway>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display();
    let path = dir.path().join("nightshift.yml");
    std::fs::write(
        &path,
        format!(
            "store: sqlite://{root}/ns.db\ndata_dir: {root}/data\nagents:\n{agents}\
             gateway:\n  prices:\n    gpt-5.5: {{input: 1.0, output: 2.0}}\n"
        ),
    )
    .unwrap();
    let none = |_: &str| None;
    let config = Config::load(&ConfigSource {
        path: &path,
        required: true,
        env: &none,
    })
    .unwrap();
    let store = nightshift::store::open(&config.store).await.unwrap();
    let env = |name: &str| (name == "REAL").then(|| real_key.to_owned());
    let gateway = Gateway::start(&config, store, &env).await.unwrap();
    (dir, config, gateway)
}

/// Job `job`'s access to the gateway with `profile`.
pub async fn open(gateway: &Arc<Gateway>, config: &Config, profile: &str, job: i64) -> JobAccess {
    gateway
        .open(JobId(job), "o/r", profile, &config.agents[profile])
        .await
        .unwrap()
        .expect("a model backend gets access")
}
