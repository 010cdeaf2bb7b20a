//! The file journal: one append-only file per process, `journal-<pid>-<nanos>.log` in
//! `delivery.journal_dir` (mode 0600, the directory private), framed and checksummed records
//! (`botbridge_core::delivery::journal`).
//!
//! - One writer thread appends. Records that must be durable before a caller is answered (a job
//!   accepted or answered) are acknowledged after the batch they came in is written and, with
//!   `journal_fsync` (the default), `fdatasync`ed: every record waiting at that moment shares one
//!   sync (group commit). Progress records (`Done`, `Finished`) are not waited for: if a crash loses
//!   one, a message is delivered again, with the same idempotency key (at least once).
//! - The process holds an exclusive `flock` on its file for its life; the kernel releases it however
//!   the process ends. Another process may take over a file only once it gets that lock (the owner is
//!   gone: crashed, killed, or stopped after a graceful stop or upgrade).
//! - Compaction: when the file passes `COMPACT_BYTES` (and twice its size after the last
//!   compaction), what is still owed is written to a new locked file, synced, renamed into place,
//!   and the old file removed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use botbridge_core::delivery::journal::{self as records, End, JobRecord, Record};
use tokio::sync::oneshot;

use crate::config::private_dir;

/// A file this large (and twice its size after the last compaction) is compacted.
const COMPACT_BYTES: u64 = 8 * 1024 * 1024;

/// What the writer thread is asked.
enum Cmd {
    /// Append; acknowledge (true: written and synced) when `ack` is given.
    Append(Vec<u8>, Option<oneshot::Sender<bool>>),
    /// Sync and stop (the graceful stop).
    Close(oneshot::Sender<()>),
}

/// This process's journal file.
pub struct FileJournal {
    tx: mpsc::Sender<Cmd>,
    dir: PathBuf,
}

impl FileJournal {
    /// Creates this process's file in `dir` (and the directory), locked, and starts the writer.
    pub fn open(dir: &Path, fsync: bool) -> std::io::Result<FileJournal> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let (file, path) = create_locked(dir)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            file,
            path,
            dir: dir.to_path_buf(),
            fsync,
            compact_at: COMPACT_BYTES,
        };
        std::thread::Builder::new()
            .name("botbridge-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(FileJournal {
            tx,
            dir: dir.to_path_buf(),
        })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `record`; the returned future says whether it is durable.
    pub fn write(&self, record: &Record) -> impl std::future::Future<Output = bool> + Send {
        let mut bytes = Vec::new();
        records::frame(record, &mut bytes);
        let (ack, done) = oneshot::channel();
        let sent = self.tx.send(Cmd::Append(bytes, Some(ack))).is_ok();
        async move { sent && done.await.unwrap_or(false) }
    }

    /// Appends `record` without waiting for it.
    pub fn note(&self, record: &Record) {
        let mut bytes = Vec::new();
        records::frame(record, &mut bytes);
        let _ = self.tx.send(Cmd::Append(bytes, None));
    }

    /// Syncs what is written and stops the writer (the file stays, for the next process).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Creates a new journal file under a temporary name, locks it, then gives it its name.
fn create_locked(dir: &Path) -> std::io::Result<(File, PathBuf)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("journal-{}-{nanos}.log", std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    if !flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        return Err(std::io::Error::other("cannot lock a new journal file"));
    }
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir);
    Ok((file, path))
}

fn flock(file: &File, how: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor this function borrows for the call.
    unsafe { libc::flock(file.as_raw_fd(), how) == 0 }
}

/// Makes a new or removed name in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

struct Writer {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    fsync: bool,
    compact_at: u64,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let mut bytes = Vec::new();
            let mut acks = Vec::new();
            let mut close = None;
            for cmd in batch {
                match cmd {
                    Cmd::Append(b, ack) => {
                        bytes.extend_from_slice(&b);
                        acks.extend(ack);
                    }
                    Cmd::Close(tx) => close = Some(tx),
                }
            }
            let ok = self.append(&bytes, !acks.is_empty() || close.is_some());
            for ack in acks {
                let _ = ack.send(ok);
            }
            if let Some(tx) = close {
                let _ = tx.send(());
                return;
            }
            self.maybe_compact();
        }
    }

    fn append(&mut self, bytes: &[u8], durable: bool) -> bool {
        let written = self.file.write_all(bytes);
        let synced = if durable && self.fsync {
            self.file.sync_data()
        } else {
            Ok(())
        };
        match written.and(synced) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the delivery journal");
                false
            }
        }
    }

    /// Rewrites the file with only what is still owed once it has grown enough.
    fn maybe_compact(&mut self) {
        let size = self.file.metadata().map_or(0, |m| m.len());
        if size < self.compact_at {
            return;
        }
        match self.compact() {
            Ok(new_size) => {
                self.compact_at = COMPACT_BYTES.max(new_size * 2);
                tracing::debug!(
                    before = size,
                    after = new_size,
                    "delivery journal compacted"
                );
            }
            Err(e) => {
                self.compact_at = size * 2;
                tracing::warn!(error = %e, "cannot compact the delivery journal");
            }
        }
    }

    fn compact(&mut self) -> std::io::Result<u64> {
        let mut bytes = Vec::new();
        File::open(&self.path)?.read_to_end(&mut bytes)?;
        let (read, _) = records::read(&bytes);
        let mut out = Vec::new();
        for r in records::live(read) {
            records::frame(&r, &mut out);
        }
        let (mut file, path) = create_locked(&self.dir)?;
        file.write_all(&out)?;
        file.sync_data()?;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        std::fs::remove_file(old)?;
        sync_dir(&self.dir);
        Ok(out.len() as u64)
    }
}

/// A journal file another process left: locked by this one until it is dropped.
pub struct Orphan {
    pub path: PathBuf,
    _lock: File,
    /// What it still owes, each with whether its bot never answered.
    pub jobs: Vec<(JobRecord, bool)>,
    /// How its bytes ended (a torn tail is the crash's last write).
    pub end: End,
}

impl Orphan {
    /// Removes the file (once what it owed is in this process's journal).
    pub fn remove(self, dir: &Path) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a recovered journal file");
        }
        sync_dir(dir);
    }
}

/// The journal files in `dir` whose processes are gone (each locked now by this one), oldest
/// first. A file that is not a regular file of the proxy's user is never read.
pub fn orphans(dir: &Path) -> Vec<Orphan> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("journal-") && n.ends_with(".log")
        })
        .map(|e| e.path())
        .collect();
    names.sort();
    names.into_iter().filter_map(|p| take_over(&p)).collect()
}

/// Locks and reads a journal file whose owner is gone; `None` while it lives (or if the file is
/// not ours to read, or went away).
fn take_over(path: &Path) -> Option<Orphan> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != private_dir::euid() {
        tracing::warn!(path = %path.display(), "journal file not owned by the proxy's user: left alone");
        return None;
    }
    if !flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        return None; // its process lives
    }
    // Another process may have taken it over and removed it between our open and our lock.
    let now = std::fs::symlink_metadata(path).ok()?;
    if now.ino() != meta.ino() || now.dev() != meta.dev() {
        return None;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let (read, end) = records::read(&bytes);
    Some(Orphan {
        path: path.to_path_buf(),
        _lock: file,
        jobs: records::pending(read),
        end,
    })
}
