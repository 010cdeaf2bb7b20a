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
        let (file, path) = create_locked(dir, &[])?;
        let len = 0;
        if on_tmpfs(dir) {
            tracing::warn!(dir = %dir.display(), "the delivery journal is on a tmpfs: it survives a crash of the process, not a reboot; set delivery.journal_dir to persistent storage");
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            file,
            len,
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

/// Creates a new journal file under a temporary name, locks it, writes and syncs `contents`, then
/// gives it its name (a file under its name is always whole and locked while its writer lives).
fn create_locked(dir: &Path, contents: &[u8]) -> std::io::Result<(File, PathBuf)> {
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
    let named = (|| {
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            return Err(std::io::Error::other("cannot lock a new journal file"));
        }
        (&file).write_all(contents)?;
        file.sync_data()?;
        let path = dir.join(&name);
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir);
        Ok(path)
    })();
    match named {
        Ok(path) => Ok((file, path)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Whether `dir` is on a tmpfs (memory: gone after a reboot).
fn on_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct it is handed; the path is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    }
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
    /// The file's length after the last write that succeeded (a failed one is cut back to it, so
    /// a half-written frame never hides the records written after it).
    len: u64,
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
            written.and_then(|()| self.file.sync_data())
        } else {
            written
        };
        match synced {
            Ok(()) => {
                self.len += bytes.len() as u64;
                true
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the delivery journal: the callers waiting get 503");
                // Cut back what may have been half written; what was acknowledged before stays.
                if let Err(e) = self.file.set_len(self.len) {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot cut the delivery journal back after a failed write");
                }
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
        // Read through the writer's own handle (a second open and close would drop an NFS lock).
        let mut bytes = Vec::new();
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(0))?;
        (&self.file).take(self.len).read_to_end(&mut bytes)?;
        let (read, _) = records::read(&bytes);
        let mut out = Vec::new();
        for r in records::live(read) {
            records::frame(&r, &mut out);
        }
        let (file, path) = create_locked(&self.dir, &out)?;
        // The old file goes while its lock is still held: no other look can take it over.
        std::fs::remove_file(&self.path)?;
        sync_dir(&self.dir);
        self.path = path;
        self.file = file;
        self.len = out.len() as u64;
        Ok(self.len)
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
    // Oldest first: by the creation time in the name (`journal-<pid>-<nanos>.log`).
    names.sort_by_key(|p| {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let nanos = name
            .trim_end_matches(".log")
            .rsplit('-')
            .next()
            .map(str::to_owned);
        (
            nanos.and_then(|n| n.parse::<u128>().ok()).unwrap_or(0),
            name,
        )
    });
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
    if now.ino() != meta.ino() || now.dev() != meta.dev() || file.metadata().ok()?.nlink() == 0 {
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
