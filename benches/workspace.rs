//! A job's worktree on a large repository (50,000 files, 40,000 commits of history, about 2 million
//! objects: the size of a big real project's repository), against the two ways a runner without a mirror
//! would get one: a plain `git checkout` of the same tree from an existing clone (target: nightshift within
//! 1.2× of it), and a fresh `git clone` (target: nightshift at least 20× faster).
//!
//! The clone goes through git's pack protocol (`--no-local`), as a clone from GitHub does, but over no
//! network at all: the figure leaves out transfer time, which only widens the gap.
//!
//! Run: cargo bench --bench workspace   (builds the repository first, about a minute; a run takes minutes)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use nightshift::ids::{JobId, RepoName};
use nightshift::repo::git::GitAuth;
use nightshift::repo::workspace::{Checkout, Workspaces};

const FILES: usize = 50_000;
const COMMITS: usize = 40_000;
/// Files each commit after the first changes.
const CHANGED_PER_COMMIT: usize = 25;

/// A small deterministic generator (xorshift64*), so every run builds the same repository.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A source-like file of about 600 bytes that differs from version to version.
fn content(file: usize, version: usize) -> String {
    const WORDS: [&str; 16] = [
        "fn", "let", "mut", "match", "impl", "struct", "enum", "pub", "use", "return", "if",
        "else", "for", "while", "async", "await",
    ];
    let mut rng = Rng((file as u64) << 32 ^ version as u64 ^ 0x9e37_79b9_7f4a_7c15);
    let mut text = format!("// file {file}, version {version}\n");
    for _ in 0..12 {
        for _ in 0..8 {
            text.push_str(WORDS[(rng.next() % 16) as usize]);
            text.push(' ');
        }
        text.push_str(&format!("{};\n", rng.next() % (1 << 30)));
    }
    text
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// A bare repository with FILES files in 500 folders and COMMITS commits, built with `git fast-import`.
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
    let mut picker = Rng(7);
    for commit in 0..COMMITS {
        writeln!(
            stream,
            "commit refs/heads/main\ncommitter t <t@t> {} +0000",
            1_700_000_000 + commit
        )
        .unwrap();
        let message = format!("commit {commit}");
        writeln!(stream, "data {}\n{message}", message.len()).unwrap();
        // The first commit writes every file; each later one changes CHANGED_PER_COMMIT of them.
        let files: Vec<usize> = if commit == 0 {
            (0..FILES).collect()
        } else {
            (0..CHANGED_PER_COMMIT)
                .map(|_| (picker.next() % FILES as u64) as usize)
                .collect()
        };
        for i in files {
            let content = content(i, commit);
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
    bare
}

fn bench(c: &mut Criterion) {
    // Under target/, not /tmp: on some machines /tmp is far slower at creating files than the disk the
    // service's data_dir would be on (seen here: 50,000 files in 28 s under /tmp, 1.1 s under /work).
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
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
    let spaces = Workspaces::new(
        &root.path().join("data"),
        nightshift::repo::git::GitPolicy {
            file_roots: vec![std::fs::canonicalize(root.path()).unwrap()],
            ..Default::default()
        },
    );
    let repo = RepoName::parse("bench/large").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut job = 0;
    // Nothing is deleted while the group runs: on this machine's disk (ext4 with online discard), creating
    // files where 50,000 were just deleted is up to 20 times slower, which would measure the disk's
    // recovery instead of git. Everything made is removed at the end.
    let mut worktrees = Vec::new();
    let mut made = 0;

    let mut group = c.benchmark_group("worktree of 50k files, 40k commits");
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
                        1,
                        &GitAuth::none(),
                    ))
                    .unwrap();
                total += started.elapsed();
                worktrees.push(wt);
            }
            total
        })
    });
    group.bench_function("nightshift: two jobs at once on the repository", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                job += 2;
                let started = Instant::now();
                let none = GitAuth::none();
                let (one, two) = rt.block_on(async {
                    tokio::join!(
                        spaces.prepare(
                            &repo,
                            &url,
                            Checkout::Branch("main"),
                            JobId(job - 1),
                            1,
                            &none
                        ),
                        spaces.prepare(&repo, &url, Checkout::Branch("main"), JobId(job), 1, &none),
                    )
                });
                total += started.elapsed();
                worktrees.extend([one.unwrap(), two.unwrap()]);
            }
            total
        })
    });
    group.bench_function("baseline: git checkout of the tree from a clone", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                made += 1;
                let target = root.path().join(format!("checkout-{made}"));
                std::fs::create_dir_all(&target).unwrap();
                let index = root.path().join(format!("index-{made}"));
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
            }
            total
        })
    });
    group.bench_function("baseline: fresh git clone", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                made += 1;
                let target = root.path().join(format!("fresh-{made}"));
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
            }
            total
        })
    });
    group.finish();
    for wt in worktrees {
        rt.block_on(wt.remove()).unwrap();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
