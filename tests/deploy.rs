//! Keeps `deploy/` and `docs/deploy.md` honest against the code, without a network, Docker or a cluster:
//! the App manifest asks for exactly the permissions and events nightshift uses; every configuration the
//! deployment files write is one nightshift loads; every `NIGHTSHIFT_*` variable they set is one it reads;
//! the image copies every file the build compiles in; the stop timeouts outlast the drain; the systemd unit
//! leaves the agents' box the namespaces it needs. (`deploy/check.sh` checks the rest with hadolint,
//! systemd-analyze and Helm's own engine.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nightshift::config::{Config, ConfigSource};
use nightshift::sink::permissions;
use nightshift::trigger::{EventKind, OutputKind};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The service's drain on SIGTERM lets running jobs finish for this long as deployed (`shutdown_grace` in
/// deploy/nightshift.yml and the chart's values, checked in the tests that load them); every stop timeout
/// must outlast it.
const SHUTDOWN_GRACE_SECS: u64 = 600;

/// The permission GitHub requires of an App for it to subscribe to each event.
fn event_permission(event: EventKind) -> Option<&'static str> {
    match event {
        EventKind::Issues | EventKind::IssueComment => Some("issues"),
        EventKind::PullRequest
        | EventKind::PullRequestReview
        | EventKind::PullRequestReviewComment => Some("pull_requests"),
        EventKind::CheckRun | EventKind::CheckSuite => Some("checks"),
        EventKind::WorkflowRun => Some("actions"),
        EventKind::Push => Some("contents"),
        // nightshift makes these events itself.
        EventKind::Schedule => None,
    }
}

#[test]
fn the_manifest_subscribes_to_every_event_a_trigger_can_name_and_nothing_else() {
    let manifest = yaml("deploy/github-app-manifest.yml");
    let events: BTreeSet<&str> = manifest["default_events"]
        .as_array()
        .expect("default_events is a list")
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let handled: BTreeSet<&str> = EventKind::ALL
        .into_iter()
        .filter(|e| event_permission(*e).is_some())
        .map(EventKind::name)
        .collect();
    assert_eq!(
        events, handled,
        "the App's events must be the ones triggers fire on"
    );
    let hook = manifest["hook_attributes"]["url"].as_str().unwrap();
    assert!(
        hook.starts_with("https://") && hook.ends_with("/webhooks/github"),
        "{hook}"
    );
    assert_eq!(
        manifest["public"],
        Value::Bool(false),
        "an App anyone may install would send nightshift anyone's events"
    );
}

#[test]
fn the_manifest_asks_for_exactly_the_permissions_the_code_uses() {
    let manifest = yaml("deploy/github-app-manifest.yml");
    let asked: BTreeMap<String, String> = manifest["default_permissions"]
        .as_object()
        .expect("default_permissions is a map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    // What job tokens are minted with, for every output, and what each event subscription needs.
    let mut needed: BTreeMap<String, String> = BTreeMap::new();
    let mut need = |name: &str, level: &str| {
        let entry = needed
            .entry(name.to_owned())
            .or_insert_with(|| level.to_owned());
        if level == "write" {
            *entry = "write".to_owned();
        }
    };
    for output in OutputKind::ALL {
        for (name, level) in permissions(output).0 {
            need(name, level);
        }
    }
    for event in EventKind::ALL {
        if let Some(name) = event_permission(event) {
            need(name, "read");
        }
    }
    // The dashboard's sign-in (organization membership).
    for (name, level) in nightshift::web::auth::APP_PERMISSIONS {
        need(name, level);
    }
    assert_eq!(asked, needed);
    assert!(
        !asked.contains_key("workflows") && !asked.contains_key("administration"),
        "never: a pushed workflow runs with the repository's secrets"
    );
}

#[test]
fn the_deploy_guide_explains_every_permission_and_event() {
    let guide = read("docs/deploy.md");
    let manifest = yaml("deploy/github-app-manifest.yml");
    for (name, level) in manifest["default_permissions"].as_object().unwrap() {
        let row = format!("| `{name}` | {} |", level.as_str().unwrap());
        assert!(
            guide.contains(&row),
            "docs/deploy.md has no row `{row}` explaining it"
        );
    }
    for event in manifest["default_events"].as_array().unwrap() {
        let row = format!("| `{}` |", event.as_str().unwrap());
        assert!(
            guide.contains(&row),
            "docs/deploy.md has no row for the event `{row}`"
        );
    }
}

fn load(text: &str, env: &[(&str, &str)]) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nightshift.yml");
    std::fs::write(&path, text).unwrap();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.get(k).cloned();
    Config::load(&ConfigSource {
        path: &path,
        required: true,
        env: &lookup,
    })
    .unwrap_or_else(|e| panic!("nightshift refuses this configuration:\n{e}\n---\n{text}"))
}

#[test]
fn the_server_configuration_loads_with_absolute_paths_and_the_image_listen_address() {
    let config = load(
        &read("deploy/nightshift.yml"),
        &[("NIGHTSHIFT_LISTEN", "0.0.0.0:3000")],
    );
    assert_eq!(config.data_dir, Path::new("/var/lib/nightshift"));
    assert_eq!(config.store, "sqlite:///var/lib/nightshift/nightshift.db");
    assert_eq!(config.triggers, Path::new("/etc/nightshift/triggers"));
    assert_eq!(config.listen.to_string(), "0.0.0.0:3000");
    assert_eq!(
        config.shutdown_grace,
        std::time::Duration::from_secs(SHUTDOWN_GRACE_SECS)
    );
    // Without the image's variable, only the reverse proxy on the same machine reaches it.
    let config = load(&read("deploy/nightshift.yml"), &[]);
    assert!(config.listen.ip().is_loopback(), "{}", config.listen);
}

/// The chart writes nightshift.yml as its own keys (`nightshift.config` in `_helpers.tpl`) merged with the
/// values' `config:`; JSON is YAML, so the merge is written as JSON and loaded.
#[test]
fn the_charts_configuration_loads() {
    let helpers = read("deploy/helm/nightshift/templates/_helpers.tpl");
    let line = helpers
        .lines()
        .find(|l| l.contains("$base := dict"))
        .expect("the chart's base keys");
    let words: Vec<&str> = line.split('"').skip(1).step_by(2).collect::<Vec<_>>();
    let mut config = serde_json::Map::new();
    for pair in words.chunks(2) {
        config.insert(pair[0].to_owned(), Value::String(pair[1].to_owned()));
    }
    let store_line = helpers
        .lines()
        .find(|l| l.contains("set $base \"store\""))
        .unwrap();
    let store = store_line.split('"').nth(3).unwrap();
    config.insert("store".into(), Value::String(store.to_owned()));
    let values = yaml("deploy/helm/nightshift/values.yaml");
    for (key, value) in values["config"].as_object().unwrap() {
        config.insert(key.clone(), value.clone());
    }
    let loaded = load(&Value::Object(config).to_string(), &[]);
    assert_eq!(loaded.data_dir, Path::new("/var/lib/nightshift"));
    assert_eq!(loaded.store, "sqlite:///var/lib/nightshift/nightshift.db");
    assert_eq!(loaded.listen.to_string(), "0.0.0.0:3000");
    assert_eq!(
        loaded.shutdown_grace,
        std::time::Duration::from_secs(SHUTDOWN_GRACE_SECS)
    );
}

/// Every `NIGHTSHIFT_*` name in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("NIGHTSHIFT_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        found.insert(name);
    }
    found
}

#[test]
fn every_variable_the_deployment_sets_is_one_the_service_reads() {
    let read_by_service: BTreeSet<String> = ["src/config.rs", "src/main.rs"]
        .iter()
        .flat_map(|f| variables(&read(f)))
        .filter(|name| {
            let quoted = format!("\"{name}\"");
            read("src/config.rs").contains(&quoted) || read("src/main.rs").contains(&quoted)
        })
        .collect();
    let files = [
        "deploy/Dockerfile",
        "deploy/nightshift.service",
        "deploy/env.example",
        "deploy/nightshift.yml",
        "deploy/helm/nightshift/templates/statefulset.yaml",
        "deploy/helm/nightshift/values.yaml",
    ];
    for file in files {
        for name in variables(&read(file)) {
            assert!(
                read_by_service.contains(&name),
                "{file} sets {name}, which nightshift never reads (it reads {read_by_service:?})"
            );
        }
    }
}

#[test]
fn the_image_copies_every_file_the_build_compiles_in() {
    let dockerfile = read("deploy/Dockerfile");
    let ignore = read("deploy/Dockerfile.dockerignore");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for source in &copied {
        assert!(
            root().join(source).exists(),
            "the Dockerfile copies {source}, which does not exist"
        );
        let allowed = ignore.lines().any(|l| {
            l.strip_prefix('!')
                .is_some_and(|p| source.trim_end_matches('/') == p.trim_end_matches('/'))
        });
        assert!(
            allowed,
            "{source} is copied but Dockerfile.dockerignore leaves it out of the build context"
        );
    }
    // Files compiled in from outside src/ (migrations, fixtures) must be in the build stage too.
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("include_str!(\"").skip(1) {
                let relative = &piece[..piece.find('"').unwrap()];
                let target = std::path::absolute(path.parent().unwrap().join(relative)).unwrap();
                let target = normalize(&target);
                let inside = target.strip_prefix(root()).unwrap().to_owned();
                assert!(
                    copied.iter().any(|c| inside.starts_with(c)),
                    "{} compiles in {}, which the Dockerfile does not copy",
                    path.display(),
                    inside.display()
                );
            }
        }
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `11min`, `660`, `10m30s` as seconds (systemd's and Docker's forms used here).
fn seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(n);
            chars.next();
        }
        let n: u64 = number.parse().unwrap();
        number.clear();
        total += n * match unit.as_str() {
            "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            other => panic!("unit {other} in {text}"),
        };
    }
    if !number.is_empty() {
        total += number.parse::<u64>().unwrap();
    }
    total
}

#[test]
fn every_stop_timeout_outlasts_the_drain() {
    let unit = read("deploy/nightshift.service");
    let setting = |name: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("the unit sets no {name}"))
            .to_owned()
    };
    let stop = seconds(&setting("TimeoutStopSec"));
    assert!(stop >= SHUTDOWN_GRACE_SECS + 30, "TimeoutStopSec {stop}s");
    // SIGTERM to nightshift alone: it stops its agents itself, then systemd kills what is left.
    assert_eq!(setting("KillMode"), "mixed");
    assert_eq!(setting("KillSignal"), "SIGTERM");
    let values = yaml("deploy/helm/nightshift/values.yaml");
    let grace = values["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace >= SHUTDOWN_GRACE_SECS + 30,
        "terminationGracePeriodSeconds {grace}"
    );
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
    let docker_stop = dockerfile
        .split("docker stop --time ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .expect("the Dockerfile says which `docker stop --time` to use");
    assert!(seconds(docker_stop) >= SHUTDOWN_GRACE_SECS + 30);
    assert_eq!(seconds("11min"), 660);
    assert_eq!(seconds("10m30s"), 630);
}

#[test]
fn the_units_hardening_leaves_the_agents_box_what_it_needs() {
    let unit = read("deploy/nightshift.service");
    let settings: BTreeMap<&str, &str> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    // `bwrap --unshare-all` creates every one of these; a refused one fails every boxed agent.
    let allowed: BTreeSet<&str> = settings["RestrictNamespaces"].split_whitespace().collect();
    for namespace in ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        assert!(
            allowed.contains(namespace),
            "RestrictNamespaces refuses {namespace}"
        );
    }
    // Each makes the kernel refuse the box's own /proc, maps the user away, or breaks the agent CLIs.
    for setting in [
        "PrivateUsers",
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProcSubset",
        "MemoryDenyWriteExecute",
    ] {
        assert!(
            !settings.contains_key(setting),
            "{setting} breaks the agents' box"
        );
    }
    assert!(
        settings["RestrictAddressFamilies"].contains("AF_NETLINK"),
        "bubblewrap brings up the box's loopback over netlink"
    );
    assert_eq!(settings["NoNewPrivileges"], "yes");
    assert_eq!(settings["ProtectSystem"], "strict");
    assert_eq!(settings["EnvironmentFile"], "/etc/nightshift/env");
    assert!(
        settings["User"] != "root",
        "as root the kernel applies no process limit to an agent"
    );
}

/// The chart's ingress with `dashboard: true` routes every page of the dashboard and of the App's setup,
/// and nothing else: no route a person needs is left out, and `/metrics` and the probes never go public.
#[test]
fn the_ingress_routes_every_dashboard_and_setup_page_and_never_the_probes_or_metrics() {
    let ingress = read("deploy/helm/nightshift/templates/ingress.yaml");
    let listed = ingress
        .lines()
        .find(|l| l.contains("range list"))
        .expect("the dashboard's paths, as a `range list`");
    let prefixes: BTreeSet<String> = listed
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(
        ingress.contains("- path: /\n            pathType: Exact"),
        "the jobs page at `/`, exactly (a `/` prefix would route /metrics)"
    );
    let mut routes = BTreeSet::new();
    for file in ["src/web/mod.rs", "src/setup.rs"] {
        for piece in read(file).split(".route(\"").skip(1) {
            routes.insert(piece.split('"').next().unwrap().to_owned());
        }
    }
    assert!(routes.len() > 10, "{routes:?}");
    for route in &routes {
        if route == "/" {
            continue;
        }
        let first = format!(
            "/{}",
            route.trim_start_matches('/').split('/').next().unwrap()
        );
        assert!(
            prefixes.contains(&first),
            "{route} is a dashboard or setup page the ingress does not route ({prefixes:?})"
        );
    }
    for private in ["/metrics", "/healthz", "/readyz", "/webhooks"] {
        assert!(
            !prefixes.contains(private),
            "{private} must not be routed as a page"
        );
    }
    let used: BTreeSet<String> = routes
        .iter()
        .filter(|r| *r != "/")
        .map(|r| format!("/{}", r.trim_start_matches('/').split('/').next().unwrap()))
        .collect();
    assert_eq!(used, prefixes, "the ingress routes only pages that exist");
}
