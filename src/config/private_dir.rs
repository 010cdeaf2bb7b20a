//! Where the proxy's own files live (`pid_file`, `upgrade_sock`, the dead-letter log, the spool,
//! the divergence log): directories only the proxy's user can write.
//!
//! The upgrade socket hands every listening socket to whoever listens on it when `SIGQUIT` comes,
//! so a process that could bind that path first would get them; a spool file planted by another
//! user would be delivered with a valid signature; a symlink planted beside a log would redirect it.
//! So the proxy (and `botbridge check`) refuses, by key, a directory that group or others may write
//! or that another user owns (root's are accepted: root can do anything anyway, and `/run` belongs
//! to it), and creates missing ones with mode 0700.
//!
//! The defaults live in the instance's own directory, `<base>/<listen>` (base:
//! `$XDG_RUNTIME_DIR/botbridge`, else `/run/botbridge` for root, else `/tmp/botbridge-<uid>`; listen:
//! `server.listen` with `:`, `[` and `]` as `_`, e.g. `127.0.0.1_8080`), so two configurations on one
//! host never share a spool, pid file or upgrade socket, while a graceful upgrade (which keeps the
//! listen address: it takes over its sockets) finds its predecessor's.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// The directory every instance's default directory is in.
pub fn base_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("botbridge"),
        _ if euid() == 0 => PathBuf::from("/run/botbridge"),
        _ => PathBuf::from(format!("/tmp/botbridge-{}", euid())),
    }
}

/// The private directory of the instance whose chat listener is `listen`: where the defaults of
/// `pid_file`, `upgrade_sock`, `dead_letter_path` and `spool_dir` live.
pub fn default_dir(listen: SocketAddr) -> PathBuf {
    let name: String = (listen.to_string().chars())
        .map(|c| match c {
            ':' | '[' | ']' => '_',
            c => c,
        })
        .collect();
    base_dir().join(name)
}

/// `name` in the instance's default directory.
pub fn default_file(listen: SocketAddr, name: &str) -> String {
    default_dir(listen).join(name).display().to_string()
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

/// The file keys of `config` and a path in the directory each must be private: `pid_file`,
/// `upgrade_sock`, `dead_letter_path`, the divergence log, and `spool_dir` and `journal_dir` themselves.
fn files(config: &Config) -> Vec<(&'static str, String)> {
    let (s, d) = (&config.process.server, &config.process.delivery);
    let mut files = vec![
        ("server.pid_file", s.pid_file.clone()),
        ("server.upgrade_sock", s.upgrade_sock.clone()),
        ("delivery.dead_letter_path", d.dead_letter_path.clone()),
        (
            "delivery.spool_dir",
            Path::new(&d.spool_dir).join("spool").display().to_string(),
        ),
        (
            "delivery.journal_dir",
            Path::new(&d.journal_dir)
                .join("journal")
                .display()
                .to_string(),
        ),
    ];
    if let Some(log) = &config.divergence_log {
        files.push(("migration.divergence_log", log.path.display().to_string()));
    }
    files
}

/// Checks every directory the proxy writes its files in (`botbridge check`, a reload).
pub fn check_all(config: &Config) -> Result<(), ConfigError> {
    (files(config).iter()).try_for_each(|(key, path)| check(key, path))
}

/// Creates (0700) and checks every directory the proxy writes its files in (before it starts).
pub fn prepare_all(config: &Config) -> Result<(), ConfigError> {
    (files(config).iter()).try_for_each(|(key, path)| prepare(key, path))
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

/// The effective user id: the owner the proxy's files must have.
pub fn euid() -> u32 {
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
    fn configs_on_different_listen_ports_get_different_default_dirs() {
        use crate::config::{delivery, server};
        let config = |port: u16| {
            let raw: server::RawServer =
                toml::from_str(&format!("listen = \"127.0.0.1:{port}\"")).unwrap();
            let (s, _) = server::validate(&raw).unwrap();
            let d = delivery::validate(&Default::default(), s.listen, false).unwrap();
            (s, d)
        };
        let ((s1, d1), (s2, d2)) = (config(8080), config(8081));
        assert_ne!(s1.pid_file, s2.pid_file);
        assert_ne!(s1.upgrade_sock, s2.upgrade_sock);
        assert_ne!(d1.spool_dir, d2.spool_dir);
        assert_ne!(d1.dead_letter_path, d2.dead_letter_path);
        assert_eq!(
            (s1, d1.clone()),
            config(8080),
            "the same listener, the same directory"
        );
        assert!(
            d1.spool_dir.ends_with("127.0.0.1_8080/spool"),
            "{}",
            d1.spool_dir
        );
        let v6 = default_dir("[::1]:8080".parse().unwrap());
        assert!(v6.ends_with("___1__8080"), "{}", v6.display());
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
