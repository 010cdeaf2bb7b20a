//! Where `pid_file` and `upgrade_sock` live: a directory only the proxy's user can write.
//!
//! The upgrade socket hands every listening socket to whoever listens on it when `SIGQUIT` comes,
//! so a process that could bind that path first would get them. The defaults therefore live in a
//! private directory (`$XDG_RUNTIME_DIR/botbridge`, else `/run/botbridge` for root, else
//! `/tmp/botbridge-<uid>`), created with mode 0700 when missing, and the proxy refuses a directory
//! that group or others may write, or that another user owns. Root's are accepted: root can do
//! anything anyway, and `/run` belongs to it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{ConfigError, ServerConfig};

/// The directory the defaults of `pid_file` and `upgrade_sock` live in.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("botbridge"),
        _ if euid() == 0 => PathBuf::from("/run/botbridge"),
        _ => PathBuf::from(format!("/tmp/botbridge-{}", euid())),
    }
}

/// `server.pid_file`'s default.
pub fn default_pid_file() -> String {
    default_dir().join("botbridge.pid").display().to_string()
}

/// `server.upgrade_sock`'s default.
pub fn default_upgrade_sock() -> String {
    default_dir().join("upgrade.sock").display().to_string()
}

/// Checks the directory of `path` (the value of `key`); a missing one is fine here (`prepare`
/// creates it).
pub fn check(key: &str, path: &str) -> Result<(), ConfigError> {
    let dir = parent(path);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(problem(key, &dir, &format!("cannot be read: {e}"))),
        Ok(link) => {
            trusted_owner(key, &dir, link.uid())?;
            let meta = std::fs::metadata(&dir)
                .map_err(|e| problem(key, &dir, &format!("cannot be read: {e}")))?;
            if !meta.is_dir() {
                return Err(problem(key, &dir, "is not a directory"));
            }
            trusted_owner(key, &dir, meta.uid())?;
            if meta.mode() & 0o022 != 0 {
                return Err(problem(
                    key,
                    &dir,
                    &format!(
                        "is writable by group or others (mode {:o}): use a directory only the proxy's user can write (chmod 700)",
                        meta.mode() & 0o7777
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// Creates the directory of `path` with mode 0700 if it is missing, then [`check`]s it.
pub fn prepare(key: &str, path: &str) -> Result<(), ConfigError> {
    let dir = parent(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| problem(key, &dir, &format!("cannot be created: {e}")))?;
    }
    check(key, path)
}

/// Checks the directories of `server.pid_file` and `server.upgrade_sock` (`botbridge check`).
pub fn check_server(s: &ServerConfig) -> Result<(), ConfigError> {
    check("server.pid_file", &s.pid_file)?;
    check("server.upgrade_sock", &s.upgrade_sock)
}

/// Creates (0700) and checks the directories of `server.pid_file` and `server.upgrade_sock`
/// (before the proxy starts).
pub fn prepare_server(s: &ServerConfig) -> Result<(), ConfigError> {
    prepare("server.pid_file", &s.pid_file)?;
    prepare("server.upgrade_sock", &s.upgrade_sock)
}

fn trusted_owner(key: &str, dir: &Path, uid: u32) -> Result<(), ConfigError> {
    if uid == euid() || uid == 0 {
        Ok(())
    } else {
        Err(problem(
            key,
            dir,
            &format!("is owned by another user (uid {uid})"),
        ))
    }
}

fn problem(key: &str, dir: &Path, what: &str) -> ConfigError {
    ConfigError::new(key, format!("directory `{}` {what}", dir.display()))
}

/// The directory a file path lives in (`.` for a bare file name).
fn parent(path: &str) -> PathBuf {
    match Path::new(path).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_shared_directory_is_refused_by_key_and_a_private_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid").display().to_string();
        check("server.pid_file", &file).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = check("server.pid_file", &file).unwrap_err();
        assert_eq!(e.key, "server.pid_file");
        assert!(e.problem.contains("writable by group or others"), "{e}");
        let e = check("server.upgrade_sock", "/tmp/botbridge_upgrade.sock").unwrap_err();
        assert_eq!(e.key, "server.upgrade_sock", "{e}");
    }

    #[test]
    fn prepare_creates_a_missing_directory_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/upgrade.sock").display().to_string();
        prepare("server.upgrade_sock", &file).unwrap();
        let mode = std::fs::metadata(dir.path().join("a/b")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
