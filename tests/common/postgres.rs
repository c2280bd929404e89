//! A real Postgres server for tests: started on a temporary directory, reachable on a Unix socket only,
//! stopped when dropped. Used by the store's unit tests (`src/store/tests.rs` includes this file) and by
//! the integration tests that run `nightshift serve` on Postgres.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Postgres server of its own on a temporary directory, reachable only on a Unix socket in that
/// directory (no TCP port another user could reach or take first), with `trust` authentication for the
/// socket. Postgres refuses to run as root: as root, the server runs as the `postgres` user.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = postgres_bin().unwrap_or_else(|| {
            panic!(
                "no Postgres server found (initdb on PATH or in /usr/lib/postgresql/*/bin): the store's tests \
                 need one; scripts/test.sh installs it (apt-get install postgresql)"
            )
        });
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("nightshift-pg-")
            .tempdir()
            .unwrap();
        let run_as = root.then(|| "postgres".to_owned());
        if root {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        // A port number names the socket file only; the server listens on no TCP address.
        let port = 40_000 + (std::process::id() % 20_000) as u16;
        let server = PgServer {
            dir,
            bin,
            run_as,
            port,
        };
        let data = server.dir.path().join("data");
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        );
        let options = format!(
            "-c listen_addresses='' -k {} -p {} -c fsync=off -c synchronous_commit=off",
            server.dir.path().display(),
            server.port
        );
        let log = server.dir.path().join("server.log");
        server.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
        server
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{tool} failed: {}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The effective user owns what it creates.
    let probe = tempfile::tempfile().unwrap();
    probe.metadata().unwrap().uid() == 0
}

/// Where `initdb` and `pg_ctl` are: on PATH, or Debian's versioned folder (the newest).
fn postgres_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(Path::new("/usr/lib/postgresql"))
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
