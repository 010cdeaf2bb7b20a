//! One live process per instance: an exclusive `flock` on `botbridge.lock` in the directory of
//! `server.pid_file` (the instance's private directory by default, which also holds its upgrade
//! socket, dead letters and spool), held for the life of the process (the kernel releases it when
//! the process ends, however it ends).
//!
//! A second process on the same directory refuses to start, so two instances never share a pid
//! file, an upgrade socket or (with the defaults) a spool; a `spool_dir` set to one shared by two
//! configurations is not locked, and each process claims only the deliveries of its own
//! credentials there (`crate::delivery::spool`). A graceful upgrade (`-u`) is the one exception by design: the
//! new process must start while the old one still runs (it receives the old one's sockets, and later
//! its spool), so with `-u` the lock is waited for on a thread instead, and taken when the old
//! process exits after its grace period. `-u` without a running process to hand over sockets gets
//! none from pingora, so it cannot serve beside a live instance.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// The lock file's name in each directory.
pub const LOCK_FILE: &str = "botbridge.lock";

/// Takes the lock (its directory was created by `private_dir::prepare_all` before). With
/// `upgrade`, a lock another process holds is waited for in the background.
pub fn acquire(config: &Config, upgrade: bool) -> Result<(), String> {
    let path = lock_file(&config.process.server.pid_file);
    let file = open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        std::mem::forget(file); // held until the process ends
    } else if upgrade {
        std::thread::spawn(move || wait(file, path));
    } else {
        return Err(format!(
            "another botbridge process runs on this instance's files (it holds {}): stop it \
             first, start this one with -u to upgrade it gracefully, or give this configuration \
             its own server.pid_file",
            path.display()
        ));
    }
    Ok(())
}

/// `botbridge.lock` beside the pid file.
fn lock_file(pid_file: &str) -> PathBuf {
    match Path::new(pid_file).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(LOCK_FILE),
        _ => PathBuf::from(LOCK_FILE),
    }
}

/// The upgrading process: blocks until the old process exits, then holds the lock.
fn wait(file: File, path: PathBuf) {
    tracing::info!(path = %path.display(), "upgrading: the instance lock is taken when the old process exits");
    if flock(&file, libc::LOCK_EX) {
        tracing::info!(path = %path.display(), "instance lock taken");
        std::mem::forget(file);
    } else {
        tracing::error!(path = %path.display(), "cannot take the instance lock");
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// `flock(2)`; false when it is held elsewhere (`LOCK_NB`) or fails.
fn flock(file: &File, how: libc::c_int) -> bool {
    loop {
        // SAFETY: the descriptor is open for the call's duration; flock has no other preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}
