//! Start-up hardening of `nightshift serve`: the process becomes non-dumpable (no process of the same user
//! can read its memory or `/proc/<pid>/environ`, nor ptrace it), the secrets it was given in its
//! environment are read once into memory and removed from the environment, and the file descriptors it
//! inherited are closed on exec, so no child it starts (git, bubblewrap, an agent with `sandbox: none`)
//! inherits either.

use std::collections::HashMap;

use crate::config::{Backend, Config, SandboxKind};

/// Environment variables nightshift reads secrets from.
pub const SECRET_VARS: &[&str] = &[
    "NIGHTSHIFT_WEBHOOK_SECRET",
    "NIGHTSHIFT_GITHUB_TOKEN",
    "NIGHTSHIFT_GITHUB_PRIVATE_KEY",
    "NIGHTSHIFT_METRICS_TOKEN",
];

/// Variables every agent may see, when the service has them. Everything else is withheld unless the
/// profile lists it under `env`: the webhook secret, the GitHub token and the App key never reach an agent.
pub const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM",
];

/// Marks the process non-dumpable (PR_SET_DUMPABLE 0).
pub fn non_dumpable() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every file descriptor past stderr close-on-exec. Whoever started the service may have left some
/// open without that flag (a shell's `exec 3<secrets`, a supervisor's log or control socket): every child
/// would inherit them, and bubblewrap passes what it inherits on to the agent, past the box's mounts.
/// nightshift's own descriptors are opened close-on-exec already.
pub fn close_inherited_on_exec() -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on this process's descriptors.
    let set = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if set == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(err);
    }
    // Kernels before 5.11: one by one.
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in open {
        // SAFETY: fcntl on a descriptor number changes its flags or fails with EBADF (the directory
        // listing's own, closed by now).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Whether the process is dumpable (for tests and the start-up log).
pub fn is_dumpable() -> bool {
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// The names of the environment variables that hold secrets for `config`: nightshift's own, every
/// profile's API key, and every variable a profile passes to its agent (besides the harmless base ones).
pub fn secret_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = SECRET_VARS.iter().map(|s| (*s).to_owned()).collect();
    for profile in config.agents.values() {
        match &profile.backend {
            Backend::Codex(o) | Backend::Claude(o) => names.push(o.api_key_env.clone()),
            Backend::OpenAi(o) => names.extend(o.api_key_env.clone()),
            Backend::Command(_) => {}
        }
        names.extend(
            profile
                .env
                .iter()
                .filter(|n| !BASE_ENV.contains(&n.as_str()))
                .cloned(),
        );
    }
    names.sort();
    names.dedup();
    names
}

/// Takes a snapshot of the environment (what agents may be given comes from it), then removes the
/// secrets in `names` from the process's environment.
///
/// # Safety
/// Changing the environment is only sound while no other thread runs: call this before the async
/// runtime (or anything else) starts threads.
pub unsafe fn take_secrets(names: &[String]) -> HashMap<String, String> {
    let snapshot: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    // SAFETY: single-threaded, per the caller.
    unsafe { scrub(names) };
    for name in names {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::remove_var(name) };
    }
    snapshot
}

unsafe extern "C" {
    /// The C library's environment: at start, pointers into the block the kernel shows as
    /// `/proc/<pid>/environ`.
    static mut environ: *mut *mut libc::c_char;
}

/// Overwrites the values of `names` in place with zeros: removing a variable only drops its pointer, and
/// the kernel keeps showing the original block in `/proc/<pid>/environ` (to root, or to anyone while the
/// process is dumpable).
///
/// # Safety
/// No other thread may read or change the environment meanwhile.
unsafe fn scrub(names: &[String]) {
    // SAFETY: environ is a NULL-terminated array of NUL-terminated strings, which nothing else touches
    // now (single-threaded); we only write within each string's own bytes, before its terminating NUL.
    unsafe {
        let mut entry = environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if let Some(eq) = text.iter().position(|&b| b == b'=')
                && names.iter().any(|n| n.as_bytes() == &text[..eq])
            {
                let value = (*entry).add(eq + 1);
                for i in 0..text.len() - eq - 1 {
                    std::ptr::write_volatile(value.add(i), 0);
                }
            }
            entry = entry.add(1);
        }
    }
}

/// Profiles that run a program outside the box (`sandbox: none`).
pub fn unboxed(config: &Config) -> Vec<&str> {
    config
        .agents
        .iter()
        .filter(|(_, p)| p.sandbox == SandboxKind::None && p.backend.edits_files())
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Profiles that need the box.
pub fn boxed(config: &Config) -> Vec<&str> {
    config
        .agents
        .iter()
        .filter(|(_, p)| p.sandbox == SandboxKind::Bubblewrap && p.backend.edits_files())
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The warning for profiles that chose `sandbox: none`.
pub fn unboxed_warning(names: &[&str]) -> Option<String> {
    (!names.is_empty()).then(|| {
        format!(
            "agent profile(s) {} run without the box (`sandbox: none`): their agents can read everything \
             nightshift's user can (the store, the config, other repositories' mirrors) and keep running \
             processes after their job",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}
