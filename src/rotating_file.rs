//! A private log file of whole lines, capped in size and rotated (`<file>` → `<file>.1` …
//! `<file>.N`): the one writer of the divergence log and the dead-letter log.
//!
//! The file is created with mode 0600 and opened with `O_NOFOLLOW`, so a symlink planted at its
//! path is refused instead of followed, and an existing file must be a regular file of this user;
//! a refused or failed line is counted and the caller logs it. At the cap the file is rotated
//! between two lines; the oldest rotated file beyond `files` is deleted and its size counted as
//! discarded. Series (`log` is `dead_letters` or `divergences`):
//! `botbridge_log_file_lines_total{log, result}` (`written`, `failed`),
//! `botbridge_log_file_rotations_total{log}`, `botbridge_log_file_discarded_bytes_total{log}`.
//!
//! Rotation is written here rather than taken from a crate: it is a few lines, rotates only between
//! whole lines, and the crates that do it bring a date library and compression along.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use prometheus::{register_int_counter_vec, IntCounterVec};

use crate::config::private_dir;
use crate::config::rotation::Rotation;

/// The `log` label values.
pub const LOGS: [&str; 2] = ["dead_letters", "divergences"];

/// The series of every rotating file.
pub struct LogFileMetrics {
    pub lines: IntCounterVec,
    pub rotations: IntCounterVec,
    pub discarded_bytes: IntCounterVec,
}

impl LogFileMetrics {
    /// Registered on first use, every series at zero.
    pub fn global() -> &'static LogFileMetrics {
        static M: OnceLock<LogFileMetrics> = OnceLock::new();
        M.get_or_init(|| {
            let counter = |name: &str, help: &str, labels: &[&str]| {
                register_int_counter_vec!(name, help, labels).expect("metric registers once")
            };
            let m = LogFileMetrics {
                lines: counter(
                    "botbridge_log_file_lines_total",
                    "Lines appended to the dead-letter and divergence logs, by result",
                    &["log", "result"],
                ),
                rotations: counter(
                    "botbridge_log_file_rotations_total",
                    "Rotations of the dead-letter and divergence logs at their size cap",
                    &["log"],
                ),
                discarded_bytes: counter(
                    "botbridge_log_file_discarded_bytes_total",
                    "Bytes of the oldest rotated file deleted by a rotation",
                    &["log"],
                ),
            };
            for log in LOGS {
                for result in ["written", "failed"] {
                    m.lines.with_label_values(&[log, result]);
                }
                m.rotations.with_label_values(&[log]);
                m.discarded_bytes.with_label_values(&[log]);
            }
            m
        })
    }
}

/// One capped log file, opened on first write and kept open.
pub struct RotatingFile {
    log: &'static str,
    path: PathBuf,
    rotation: Rotation,
    /// The open file and its size; lines are appended under this lock.
    file: Mutex<Option<(File, u64)>>,
}

impl RotatingFile {
    /// `log` is one of [`LOGS`] (the metrics label).
    pub fn new(log: &'static str, path: PathBuf, rotation: Rotation) -> Self {
        RotatingFile {
            log,
            path,
            rotation,
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (ending in `\n`), rotating first if it would pass the cap; counted.
    pub fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let result = self.append_line(line);
        let label = if result.is_ok() { "written" } else { "failed" };
        let m = LogFileMetrics::global();
        m.lines.with_label_values(&[self.log, label]).inc();
        result
    }

    fn append_line(&self, line: &[u8]) -> std::io::Result<()> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let max = self.rotation.max_bytes;
        let over = |size: u64| size > 0 && size + line.len() as u64 > max;
        if slot.as_ref().is_some_and(|(_, size)| over(*size)) {
            *slot = None;
            self.rotate()?;
        }
        if slot.is_none() {
            let file = open_private_append(&self.path)?;
            let size = file.metadata()?.len();
            *slot = Some(if over(size) {
                drop(file);
                self.rotate()?;
                (open_private_append(&self.path)?, 0)
            } else {
                (file, size)
            });
        }
        let (file, size) = slot.as_mut().expect("opened above");
        file.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }

    /// Deletes `<file>.N` (counting its size), then `<file>.N-1` → `<file>.N` … `<file>` →
    /// `<file>.1`.
    fn rotate(&self) -> std::io::Result<()> {
        let m = LogFileMetrics::global();
        m.rotations.with_label_values(&[self.log]).inc();
        let files = self.rotation.files;
        let oldest = self.numbered(files);
        if let Ok(meta) = std::fs::symlink_metadata(&oldest) {
            std::fs::remove_file(&oldest)?;
            let discarded = m.discarded_bytes.with_label_values(&[self.log]);
            discarded.inc_by(meta.len());
        }
        for n in (1..files).rev() {
            match std::fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.numbered(1))
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        p.into()
    }
}

/// Opens `path` to append, creating it with mode 0600. A symlink is refused (`O_NOFOLLOW`), and so
/// is anything but a regular file owned by this user.
pub fn open_private_append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != private_dir::euid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not a regular file owned by the proxy's user",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn log(path: &Path, files: u32) -> RotatingFile {
        let rotation = Rotation {
            max_bytes: 4096,
            files,
        };
        RotatingFile::new("dead_letters", path.to_path_buf(), rotation)
    }

    #[test]
    fn it_rotates_at_the_cap_keeps_n_files_and_creates_them_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let f = log(&path, 2);
        let line = [b'x'; 99]
            .iter()
            .copied()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        for _ in 0..200 {
            f.append(&line).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&path) <= 4096 && size(&path) % 100 == 0);
        assert_eq!(size(&dir.path().join("dead.jsonl.1")), 4000);
        assert!(dir.path().join("dead.jsonl.2").exists());
        assert!(!dir.path().join("dead.jsonl.3").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_symlink_at_the_path_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "theirs\n").unwrap();
        let path = dir.path().join("dead.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(log(&path, 1).append(b"line\n").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs\n");
    }
}
