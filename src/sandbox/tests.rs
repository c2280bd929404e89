use super::*;

/// Runs `script` with sh in the box `spec`; returns (success, stdout).
fn run(spec: &BoxSpec, script: &str) -> (bool, String) {
    let argv = command_line(spec, &["sh".into(), "-c".into(), script.into()]);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A service's layout: a config folder with the config file and the key, a data dir with two repositories'
/// mirrors, two jobs and the store, and a job's worktree.
struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    spec: BoxSpec,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("etc/nightshift.yml", "token: config-secret");
    write("etc/app.pem", "key-secret");
    write("etc/agent.sh", "#!/bin/sh\necho agent-ran\n");
    write("data/nightshift.db", "store-secret");
    write("data/nightshift.db-wal", "wal-secret");
    write("data/mirrors/o/a.git/HEAD", "ours");
    write("data/mirrors/o/b.git/HEAD", "other-repo-secret");
    write("data/worktrees/job-1/README.md", "hello");
    write("data/worktrees/job-2/README.md", "other-job-secret");
    write("data/jobs/1/event.json", "{}");
    write("data/jobs/2/event.json", "other-job-secret");
    for d in ["data/jobs/1/home", "data/jobs/1/output", "home"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    write("home/.ssh/id_ed25519", "home-secret");
    let spec = BoxSpec {
        worktree: root.join("data/worktrees/job-1"),
        read_only_worktree: false,
        writable: vec![
            root.join("data/jobs/1/home"),
            root.join("data/jobs/1/output"),
        ],
        read_only: vec![root.join("data/jobs/1"), root.join("data/mirrors/o/a.git")],
        hidden: hidden_paths(
            &root.join("data"),
            Some(&root.join("home")),
            &[root.join("etc/nightshift.yml"), root.join("etc/app.pem")],
            &format!("sqlite://{}", root.join("data/nightshift.db").display()),
        ),
        network: Network::None,
        limits: Limits::default(),
        init: PathBuf::new(),
    };
    World {
        _dir: dir,
        root,
        spec,
    }
}

#[test]
fn sizes_are_said_in_the_largest_unit_they_reach() {
    assert_eq!(size_text(512), "512 bytes");
    assert_eq!(size_text(64 << 20), "64.0 MiB");
    assert_eq!(size_text((3 << 30) / 2), "1.5 GiB");
    assert_eq!(size_text(16 << 30), "16.0 GiB");
    assert_eq!(size_text(u64::MAX), "16777215.9 TiB");
}

#[test]
fn the_box_shows_the_job_its_own_paths_and_hides_the_services() {
    let w = world();
    let r = w.root.display();
    let script = format!(
        "cat README.md; echo; cat {r}/data/mirrors/o/a.git/HEAD; echo; cat {r}/data/jobs/1/event.json; echo; \
         for f in {r}/etc/nightshift.yml {r}/etc/app.pem {r}/data/nightshift.db {r}/data/nightshift.db-wal \
                  {r}/data/mirrors/o/b.git/HEAD {r}/data/worktrees/job-2/README.md {r}/data/jobs/2/event.json \
                  {r}/home/.ssh/id_ed25519; do cat $f 2>/dev/null; done; echo end"
    );
    let (ok, out) = run(&w.spec, &script);
    assert!(ok, "{out}");
    assert_eq!(out, "hello\nours\n{}\nend\n");
}

#[test]
fn the_box_writes_only_its_worktree_and_job_folders() {
    let w = world();
    let r = w.root.display();
    let script = format!(
        "echo a > new.txt && echo wrote-worktree; echo b > {r}/data/jobs/1/home/h && echo wrote-home; \
         for f in {r}/data/mirrors/o/a.git/config {r}/data/jobs/1/prompt.md /tmp/x /run/x /var/tmp/x /dev/x \
                  {r}/data/x /usr/x; do (echo c > $f) 2>/dev/null && echo escaped $f; done; \
         echo s > /dev/shm/s && echo shm; head -c 100000000 /dev/zero > /dev/shm/big 2>/dev/null || echo shm-full; \
         echo end"
    );
    let (ok, out) = run(&w.spec, &script);
    assert!(ok, "{out}");
    assert_eq!(out, "wrote-worktree\nwrote-home\nshm\nshm-full\nend\n");
    assert!(w.root.join("data/worktrees/job-1/new.txt").exists());
    assert!(!w.root.join("data/mirrors/o/a.git/config").exists());
}

#[test]
fn a_program_next_to_the_config_runs_but_the_config_stays_masked() {
    let mut w = world();
    let program = w.root.join("etc/agent.sh");
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    w.spec.read_only.extend(program_folders(&program));
    let r = w.root.display();
    let script = format!(
        "{r}/etc/agent.sh; cat {r}/etc/nightshift.yml {r}/etc/app.pem 2>/dev/null; echo end"
    );
    let (ok, out) = run(&w.spec, &script);
    assert!(ok, "{out}");
    assert_eq!(out, "agent-ran\nend\n");
}

#[test]
fn the_box_sees_no_other_process_and_has_no_capabilities() {
    let w = world();
    let (ok, out) = run(
        &w.spec,
        "ls /proc | grep -c '^[0-9]' ; grep CapEff /proc/self/status; cat /proc/1/environ >/dev/null 2>&1 && echo read-init",
    );
    assert!(ok, "{out}");
    let mut lines = out.lines();
    let count: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(count <= 4, "only the box's own processes: {out}");
    assert_eq!(
        lines.next().unwrap().split_whitespace().nth(1),
        Some("0000000000000000")
    );
}

#[test]
fn a_read_only_worktree_cannot_be_written() {
    let mut w = world();
    w.spec.read_only_worktree = true;
    let (ok, out) = run(
        &w.spec,
        "(echo x > new.txt) 2>/dev/null || echo refused; cat README.md",
    );
    assert!(ok, "{out}");
    assert_eq!(out, "refused\nhello");
}

#[test]
fn system_folders_are_never_hidden_whole() {
    let hidden = hidden_paths(
        Path::new("/srv/ns/data"),
        Some(Path::new("/")),
        &[PathBuf::from("/etc/nightshift.yml")],
        "sqlite:///srv/ns/data/db",
    );
    assert!(hidden.contains(&PathBuf::from("/etc/nightshift.yml")));
    assert!(!hidden.contains(&PathBuf::from("/etc")));
    assert!(!hidden.contains(&PathBuf::from("/")));
    assert!(hidden.contains(&PathBuf::from("/srv/ns/data/db-wal")));
    assert!(hidden.contains(&PathBuf::from("/tmp")));
}

#[test]
fn sizes_have_units() {
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("512M"), Some(512 << 20));
    assert_eq!(parse_size("4GiB"), Some(4 << 30));
    assert_eq!(parse_size("2 kb"), Some(2048));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(parse_size("99999999999T"), None);
}

#[test]
fn the_probe_succeeds_where_bubblewrap_works() {
    probe().unwrap();
}

#[test]
fn the_command_line_has_every_namespace_no_capability_and_the_forwarder_with_a_gateway() {
    let mut w = world();
    let argv = command_line(&w.spec, &["agent".into(), "--flag".into()]);
    let text = argv.join(" ");
    assert!(text.starts_with("bwrap --unshare-all "), "{text}");
    // This machine's bubblewrap (0.8.0 in CI) keeps the box from making user namespaces.
    assert!(super::blocks_nested_userns());
    for flag in [
        "--unshare-user --disable-userns",
        "--new-session --die-with-parent --cap-drop ALL --ro-bind / /",
        "--proc /proc",
        "--remount-ro /tmp",
        "--remount-ro /run",
    ] {
        assert!(text.contains(flag), "{flag}: {text}");
    }
    assert!(!text.contains("--share-net"));
    assert!(text.ends_with(" -- agent --flag"), "{text}");
    w.spec.network = Network::Gateway {
        socket: w.root.join("gw.sock"),
        port: 4000,
    };
    w.spec.init = PathBuf::from("/usr/bin/nightshift");
    let text = command_line(&w.spec, &["agent".into()]).join(" ");
    assert!(!text.contains("--share-net"));
    assert!(
        text.contains(&format!("--ro-bind /usr/bin/nightshift {INIT_PATH}")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "-- {INIT_PATH} box-init --forward 127.0.0.1:4000={GATEWAY_SOCKET} -- agent"
        )),
        "{text}"
    );
    w.spec.network = Network::Host;
    assert!(
        command_line(&w.spec, &["agent".into()])
            .join(" ")
            .contains("--disable-userns --share-net")
    );
}

#[test]
fn a_shared_folder_above_hidden_ones_shows_neither_them_nor_the_secret_files() {
    let mut w = world();
    // An operator shares the whole service folder: the data dir and the secret files stay hidden.
    std::fs::create_dir_all(w.root.join("tools")).unwrap();
    std::fs::write(w.root.join("tools/tool"), "t").unwrap();
    w.spec.read_only.push(w.root.clone());
    let r = w.root.display();
    let script = format!(
        "cat {r}/tools/tool >/dev/null && echo shared-visible; ls {r}/etc | wc -l; \
         for f in {r}/etc/nightshift.yml {r}/etc/app.pem {r}/data/nightshift.db {r}/data/mirrors/o/b.git/HEAD \
                  {r}/data/jobs/2/event.json; do cat $f 2>/dev/null; done; echo end"
    );
    let (ok, out) = run(&w.spec, &script);
    assert!(ok, "{out}");
    assert_eq!(out, "shared-visible\n0\nend\n");
}

#[test]
fn an_npm_installed_program_in_a_hidden_place_runs_with_its_dependencies() {
    // As `npm ci` lays out the agent CLIs: `.bin/tool` links into its package, which needs a sibling package.
    // Here under /tmp (hidden in every box), as in a checkout that lives there.
    let w = world();
    let modules = w.root.join("clis/node_modules");
    let write = |rel: &str, text: &str| {
        let p = modules.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    write(
        "tool/bin/tool.sh",
        "#!/bin/sh\nhere=$(dirname \"$(readlink -f \"$0\")\")\n. \"$here/../../dep/lib.sh\"\nsay\n",
    );
    write(
        "dep/lib.sh",
        "say() { echo tool-and-its-dependency-ran; }\n",
    );
    std::fs::create_dir_all(modules.join(".bin")).unwrap();
    std::os::unix::fs::symlink("../tool/bin/tool.sh", modules.join(".bin/tool")).unwrap();
    let path = format!("{}:/usr/bin:/bin", modules.join(".bin").display());
    let located = locate_program("tool", Some(&path), &w.spec.worktree).unwrap();
    let mut spec = w.spec.clone();
    spec.read_only.extend(program_folders(&located));
    let argv = command_line(&spec, &["tool".into()]);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", &path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text, "tool-and-its-dependency-ran\n");
    // Only the packages came back, not the rest of the hidden place they live in.
    let (_, out) = run(
        &spec,
        &format!("cat {}/etc/app.pem 2>/dev/null; echo end", w.root.display()),
    );
    assert_eq!(out, "end\n");
}
