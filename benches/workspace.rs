//! A job's worktree on a large repository (50,000 files, 20 commits of history), against the two ways a
//! runner without a mirror would get one: a plain `git checkout` of the same tree from an existing clone
//! (target: nightshift within 1.2× of it), and a fresh `git clone` (target: nightshift at least 20× faster).
//!
//! Run: cargo bench --bench workspace   (builds the repository first; on a slow disk a run takes minutes)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use nightshift::agent::git::GitAuth;
use nightshift::agent::workspace::{Checkout, Workspaces};
use nightshift::ids::{JobId, RepoName};

const FILES: usize = 50_000;
const COMMITS: usize = 20;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// A bare repository with FILES files in 500 folders, built with `git fast-import`.
fn large_repo(root: &Path) -> PathBuf {
    let bare = root.join("large.git");
    git(
        root,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            bare.to_str().unwrap(),
        ],
    );
    let mut import = Command::new("git")
        .current_dir(&bare)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream = std::io::BufWriter::new(import.stdin.take().unwrap());
    for commit in 0..COMMITS {
        writeln!(
            stream,
            "commit refs/heads/main\ncommitter t <t@t> {} +0000",
            1_700_000_000 + commit
        )
        .unwrap();
        let message = format!("commit {commit}");
        writeln!(stream, "data {}\n{message}", message.len()).unwrap();
        // The first commit writes every file; later ones change every tenth of a slice.
        let files: Box<dyn Iterator<Item = usize>> = if commit == 0 {
            Box::new(0..FILES)
        } else {
            Box::new((commit..FILES).step_by(50))
        };
        for i in files {
            let content = format!(
                "// file {i}, version {commit}\npub fn f{i}() -> usize {{ {i} + {commit} }}\n"
            );
            writeln!(
                stream,
                "M 644 inline src/m{:03}/f{i}.rs\ndata {}\n{content}",
                i % 500,
                content.len()
            )
            .unwrap();
        }
    }
    drop(stream);
    assert!(import.wait().unwrap().success());
    git(&bare, &["gc", "--quiet"]);
    bare
}

fn bench(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    let remote = large_repo(root.path());
    let url = remote.to_str().unwrap().to_owned();
    let clone = root.path().join("clone");
    git(
        root.path(),
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            &url,
            clone.to_str().unwrap(),
        ],
    );
    let spaces = Workspaces::new(&root.path().join("data"));
    let repo = RepoName::parse("bench/large").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut job = 0;

    let mut group = c.benchmark_group("worktree of 50k files");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("nightshift: fetch + worktree at the commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                job += 1;
                let started = Instant::now();
                let wt = rt
                    .block_on(spaces.prepare(
                        &repo,
                        &url,
                        Checkout::Branch("main"),
                        JobId(job),
                        &GitAuth::none(),
                    ))
                    .unwrap();
                total += started.elapsed();
                rt.block_on(wt.remove()).unwrap();
            }
            total
        })
    });
    group.bench_function("baseline: git checkout of the tree from a clone", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let target = root.path().join(format!("checkout-{i}"));
                std::fs::create_dir_all(&target).unwrap();
                let index = root.path().join(format!("index-{i}"));
                let started = Instant::now();
                let status = Command::new("git")
                    .current_dir(&clone)
                    .env("GIT_INDEX_FILE", &index)
                    .args([
                        "--work-tree",
                        target.to_str().unwrap(),
                        "checkout",
                        "--quiet",
                        "-f",
                        "main",
                        "--",
                        ".",
                    ])
                    .status()
                    .unwrap();
                total += started.elapsed();
                assert!(status.success());
                std::fs::remove_dir_all(&target).unwrap();
                std::fs::remove_file(&index).unwrap();
            }
            total
        })
    });
    group.bench_function("baseline: fresh git clone", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let target = root.path().join(format!("fresh-{i}"));
                let started = Instant::now();
                git(
                    root.path(),
                    &[
                        "clone",
                        "--quiet",
                        "--no-local",
                        &format!("file://{url}"),
                        target.to_str().unwrap(),
                    ],
                );
                total += started.elapsed();
                std::fs::remove_dir_all(&target).unwrap();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
