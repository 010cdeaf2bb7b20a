//! Where log lines go: stderr, the access lines batched per thread for as long as its async runtime
//! has ready work.
//!
//! An access line logged inside a tokio runtime is appended to its thread's buffer; the first line of
//! a batch spawns a task on that runtime that writes the whole buffer with one `write`. The task runs
//! after the work that was already ready (the other connections woken by the same poll), so under
//! load one `write` carries many access lines, and at low load a line is written as soon as its
//! request is done: a few µs after its answer. Every other line is written at once, after the
//! thread's batch (so a thread's lines keep their order), as are lines logged outside a runtime and
//! a batch past [`BATCH_BYTES`]. A thread's batch is written out when the thread ends (pingora joins
//! its worker threads before the process exits), so a graceful stop loses nothing.
//!
//! A write never blocks a worker: a stderr nobody reads (a full pipe) used to stop the proxy.
//! stderr is offered bytes without waiting ([`stderr`]); what it does not take waits in one backlog
//! for the process, oldest first, up to [`PENDING_BYTES`]: the rest of a line a partial write cut is
//! always at the backlog's front, so no line lands inside another. Lines past the bound are dropped
//! and counted (`botbridge_log_lines_dropped_total`). While lines wait, a task offers them again every
//! [`RETRY`] until they are out, then a `WARN` line says how many were dropped. A thread that ends,
//! and a line logged outside a runtime (the process's own start and stop), wait up to [`SETTLE`] for
//! stderr to take what waits, once per stall.
//!
//! Why: with the access log on (its default), a `write` per request was about 1 µs of system time
//! plus the wake-ups it causes, the largest part of the 4 µs the log cost per request.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use crate::log_line::ACCESS_TARGET;

/// Past this many buffered bytes a batch is written at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Most bytes the process keeps while stderr takes none (its reader stopped reading); lines beyond
/// are dropped and counted.
pub const PENDING_BYTES: usize = 1024 * 1024;

/// How long a thread that ends, or a line logged outside a runtime, waits for stderr to take what
/// waits.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How often what waits is offered to stderr again while no new line comes.
pub const RETRY: Duration = Duration::from_millis(100);

/// `botbridge_log_lines_dropped_total`, registered with the other metrics.
pub static DROPPED_LINES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "botbridge_log_lines_dropped_total",
        "Log lines dropped because stderr did not take them (its reader stopped reading).",
    )
    .expect("a valid metric")
});

/// Dropped lines already reported by a line on stderr.
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// Whether a task offering the backlog again is on its way.
static RETRYING: AtomicBool = AtomicBool::new(false);

/// Offers `bytes` to stderr; the number it took (in unit tests, [`tests::WRITES`] instead).
fn sink(bytes: &[u8]) -> io::Result<usize> {
    #[cfg(test)]
    return tests::sink(bytes);
    #[cfg(not(test))]
    stderr::offer(bytes)
}

/// Waits up to `limit` for stderr to take bytes; whether it would.
#[cfg_attr(test, allow(unused_variables))]
fn wait_writable(limit: Duration) -> bool {
    #[cfg(test)]
    return tests::writable();
    #[cfg(not(test))]
    stderr::wait_writable(limit)
}

fn lines_in(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// What stderr has not taken yet, from every thread, oldest first.
struct Backlog {
    bytes: Vec<u8>,
    /// Where what waits begins (what was written before is dropped from the front now and then).
    start: usize,
    /// A wait outside a runtime ran out: the next ones do not wait until stderr takes lines again.
    stalled: bool,
}

static BACKLOG: Mutex<Backlog> = Mutex::new(Backlog {
    bytes: Vec::new(),
    start: 0,
    stalled: false,
});

fn backlog() -> MutexGuard<'static, Backlog> {
    BACKLOG.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.start == self.bytes.len()
    }

    /// Offers what waits, then `lines` (whole lines), to stderr; what it does not take waits.
    fn emit(&mut self, lines: &[u8]) {
        if !self.is_empty() {
            self.keep(lines);
            return self.flush();
        }
        match sink(lines) {
            Ok(n) if n < lines.len() => self.keep_rest(&lines[n..]),
            Ok(_) => {}
            // Nowhere to report a failed write (a closed pipe): its lines are counted.
            Err(_) => DROPPED_LINES.inc_by(lines_in(lines)),
        }
    }

    /// Offers what waits to stderr again.
    fn flush(&mut self) {
        if self.is_empty() {
            return;
        }
        match sink(&self.bytes[self.start..]) {
            Ok(n) => self.start += n,
            Err(_) => {
                DROPPED_LINES.inc_by(lines_in(&self.bytes[self.start..]));
                self.start = self.bytes.len();
            }
        }
        if self.is_empty() {
            self.bytes.clear();
            self.start = 0;
            self.stalled = false;
        } else if self.start >= BATCH_BYTES {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
    }

    /// The rest of a write stderr cut: the end of the cut line is kept whatever the bound (so the
    /// line comes out whole), then whole lines as room allows.
    fn keep_rest(&mut self, rest: &[u8]) {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        self.bytes.extend_from_slice(&rest[..end]);
        self.keep(&rest[end..]);
    }

    /// Keeps the whole lines of `lines` that fit under [`PENDING_BYTES`]; counts the others.
    fn keep(&mut self, lines: &[u8]) {
        let room = PENDING_BYTES.saturating_sub(self.bytes.len() - self.start);
        let fits = match lines.len() <= room {
            true => lines.len(),
            false => (lines[..room].iter().rposition(|&b| b == b'\n')).map_or(0, |i| i + 1),
        };
        self.bytes.extend_from_slice(&lines[..fits]);
        DROPPED_LINES.inc_by(lines_in(&lines[fits..]));
    }

    /// Offers what waits until stderr takes it all or `limit` passes.
    fn settle(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.flush();
            let left = deadline.saturating_duration_since(Instant::now());
            if self.is_empty() || left.is_zero() || !wait_writable(left) {
                return;
            }
        }
    }
}

/// After lines were handed over inside a runtime: while some wait, or dropped ones are not yet
/// reported, a task (one at a time) offers them again every [`RETRY`] and then reports.
fn follow_up() {
    if !lines_wait_or_unreported() || RETRYING.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return RETRYING.store(false, Ordering::Release);
    };
    runtime.spawn(async {
        // Cleared however the task ends (a runtime that stops drops it).
        struct Retrying;
        impl Drop for Retrying {
            fn drop(&mut self) {
                RETRYING.store(false, Ordering::Release);
            }
        }
        let _retrying = Retrying;
        loop {
            tokio::time::sleep(RETRY).await;
            let mut backlog = backlog();
            backlog.flush();
            if backlog.is_empty() {
                break;
            }
        }
        report_dropped();
    });
}

/// Whether lines wait for stderr, or dropped ones are not reported yet.
fn lines_wait_or_unreported() -> bool {
    DROPPED_LINES.get() > REPORTED.load(Ordering::Relaxed) || !backlog().is_empty()
}

/// Once stderr takes lines again: a line saying how many were dropped since the last such line;
/// that number. Not called from inside the writer (it logs).
fn report_dropped() -> u64 {
    let dropped = DROPPED_LINES.get();
    let before = REPORTED.fetch_max(dropped, Ordering::Relaxed);
    if before >= dropped {
        return 0;
    }
    tracing::warn!(
        target: "botbridge::log_writer",
        dropped = dropped - before,
        "log lines dropped: stderr was not taking them"
    );
    dropped - before
}

/// Outside a runtime (no task can offer lines later): wait up to [`SETTLE`] for what waits, once per
/// stall.
fn settle_outside_runtime() {
    let mut backlog = backlog();
    if !backlog.is_empty() && !backlog.stalled {
        backlog.settle(SETTLE);
        backlog.stalled = !backlog.is_empty();
    }
}

/// A thread's unwritten lines, and whether a task to write them is already on its way.
#[derive(Default)]
struct Batch {
    bytes: Mutex<Vec<u8>>,
    scheduled: AtomicBool,
}

impl Batch {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the thread's lines to stderr, behind what waits.
    fn write_out(&self) {
        let mut bytes = self.lock();
        if !bytes.is_empty() {
            backlog().emit(&bytes);
            bytes.clear();
        }
    }
}

/// The thread's batch; written out when the thread ends, waiting up to [`SETTLE`].
struct ThreadBatch(Arc<Batch>);

impl Drop for ThreadBatch {
    fn drop(&mut self) {
        self.0.write_out();
        backlog().settle(SETTLE);
    }
}

thread_local! {
    static BATCH: ThreadBatch = ThreadBatch(Arc::default());
}

/// The `MakeWriter` of the log subscriber.
#[derive(Clone, Copy, Default)]
pub struct BatchedStderr;

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { batch: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            batch: meta.target() == ACCESS_TARGET,
        }
    }
}

/// Takes one formatted event per `write` (tracing-subscriber writes each with one `write_all`).
pub struct LineWriter {
    /// Whether the line may wait for the end of the runtime's pass (access lines).
    batch: bool,
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let batched = BATCH.try_with(|thread| {
            let batch = &thread.0;
            let mut bytes = batch.lock();
            bytes.extend_from_slice(line);
            if !self.batch || bytes.len() >= BATCH_BYTES {
                backlog().emit(&bytes);
                bytes.clear();
                drop(bytes);
                return after_direct_write();
            }
            drop(bytes);
            if batch.scheduled.swap(true, Ordering::AcqRel) {
                return;
            }
            // The runtime's handle is looked up once per batch, not per line.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let batch = Arc::clone(batch);
                    runtime.spawn(async move {
                        batch.scheduled.store(false, Ordering::Release);
                        batch.write_out();
                        follow_up();
                    });
                }
                Err(_) => {
                    batch.scheduled.store(false, Ordering::Release);
                    batch.write_out();
                    settle_outside_runtime();
                }
            }
        });
        if batched.is_err() {
            // Logged while the thread's own state is being torn down: written at once.
            backlog().emit(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// After a line written at once: when lines wait (or dropped ones are unreported), the follow-up
/// inside a runtime, the bounded wait outside one.
fn after_direct_write() {
    if !lines_wait_or_unreported() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(_) => follow_up(),
        Err(_) => settle_outside_runtime(),
    }
}

/// stderr as the log's destination: offered bytes, it takes what it can without waiting. A pipe,
/// FIFO or terminal is written through a second, non-blocking open file description of the same file
/// (`/proc/self/fd/2`; the one the process inherited stays as it is, shared with its parent); a pipe
/// that cannot be opened again (a container's pipe owned by another user, no `/proc`) is asked with
/// `poll` before each write of at most `PIPE_BUF` bytes, which then cannot block; a socket (journald)
/// is written with `MSG_DONTWAIT`; a regular file as it is, since writing to it does not wait for a
/// reader. Callers hold the backlog's lock, so this process's threads never race between the `poll`
/// and the `write`. stderr is examined at the first line.
mod stderr {
    // Unit tests write to a capture instead.
    #![cfg_attr(test, allow(dead_code))]

    use std::fs::{File, OpenOptions};
    use std::io::{self, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::OnceLock;
    use std::time::Duration;

    /// Writes of at most this many bytes to a pipe are atomic, and fit in one free pipe buffer.
    const PIPE_BUF: usize = 4096;

    enum Target {
        Blocking,
        NonBlocking(File),
        PolledPipe,
        Socket,
    }

    fn target() -> &'static Target {
        static TARGET: OnceLock<Target> = OnceLock::new();
        TARGET.get_or_init(|| {
            // SAFETY: fstat on fd 2 only fills the struct it is given.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstat(2, &mut st) } != 0 {
                return Target::Blocking;
            }
            let kind = st.st_mode & libc::S_IFMT;
            match kind {
                libc::S_IFIFO | libc::S_IFCHR => OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open("/proc/self/fd/2")
                    .map_or(
                        match kind {
                            libc::S_IFIFO => Target::PolledPipe,
                            _ => Target::Blocking,
                        },
                        Target::NonBlocking,
                    ),
                libc::S_IFSOCK => Target::Socket,
                _ => Target::Blocking,
            }
        })
    }

    /// One write of `bytes` without waiting; `Ok(0)` when stderr takes nothing now.
    fn write_once(target: &Target, bytes: &[u8]) -> io::Result<usize> {
        let raw = |n: isize| match n {
            n if n >= 0 => Ok(n as usize),
            _ => Err(io::Error::last_os_error()),
        };
        match target {
            Target::Blocking => io::stderr().write_all(bytes).map(|()| bytes.len()),
            Target::NonBlocking(file) => (&*file).write(bytes),
            Target::PolledPipe => match writable(0) {
                // SAFETY: the pointer and length are those of a live slice.
                true => {
                    raw(unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len().min(PIPE_BUF)) })
                }
                false => Ok(0),
            },
            // SAFETY: the pointer and length are those of a live slice.
            Target::Socket => raw(unsafe {
                libc::send(
                    2,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }),
        }
    }

    /// Writes as much of `bytes` as stderr takes without waiting; how much that was.
    pub(super) fn offer(bytes: &[u8]) -> io::Result<usize> {
        let target = target();
        let mut at = 0;
        while at < bytes.len() {
            match write_once(target, &bytes[at..]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // What was written counts; the error comes back at the next offer.
                Err(_) if at > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(at)
    }

    /// Waits up to `limit` for stderr to take bytes; whether it would. A blocking stderr is never
    /// waited for.
    #[cfg_attr(test, allow(unused_variables))]
    pub(super) fn wait_writable(limit: Duration) -> bool {
        !matches!(target(), Target::Blocking) && writable(limit.as_millis().clamp(1, 60_000) as i32)
    }

    fn writable(ms: i32) -> bool {
        let mut fd = libc::pollfd {
            fd: 2,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut fd, 1, ms) > 0 && fd.revents & libc::POLLOUT != 0 }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;
    use std::sync::Mutex;

    use super::*;

    /// Every `write` the writer made, in order (all tests' together: each looks for its own lines).
    pub(crate) static WRITES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    thread_local! {
        /// How many more bytes this thread's stderr takes (`None`: all), as a reader that stopped.
        static TAKES: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// The log writer's state is the process's: its tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Runs a test on a thread of its own, its thread-local batch written out before the next test
    /// starts (a thread's end writes what waits, whichever test it came from).
    fn isolated(test: impl FnOnce() + Send + 'static) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(test).join().unwrap();
    }

    pub(super) fn writable() -> bool {
        TAKES.get() != Some(0)
    }

    pub(super) fn sink(bytes: &[u8]) -> io::Result<usize> {
        let n = TAKES
            .get()
            .map_or(bytes.len(), |left| left.min(bytes.len()));
        TAKES.set(TAKES.get().map(|left| left - n));
        if n > 0 {
            WRITES.lock().unwrap().push(bytes[..n].to_vec());
        }
        Ok(n)
    }

    fn writes_with(tag: &str) -> Vec<String> {
        WRITES
            .lock()
            .unwrap()
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .filter(|w| w.contains(tag))
            .collect()
    }

    /// An access line.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn log(line: String) {
        LineWriter { batch: true }
            .write_all(line.as_bytes())
            .unwrap();
    }

    #[test]
    fn lines_logged_in_one_pass_of_the_runtime_go_out_in_one_write() {
        isolated(|| {
            let rt = runtime();
            rt.block_on(async {
                let tasks: Vec<_> = (0..10)
                    .map(|i| tokio::spawn(async move { log(format!("batch-a {i}\n")) }))
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                tokio::task::yield_now().await;
            });
            let writes = writes_with("batch-a");
            let expected: String = (0..10).map(|i| format!("batch-a {i}\n")).collect();
            assert_eq!(writes, vec![expected]);
        });
    }

    #[test]
    fn a_line_is_written_once_its_pass_is_over() {
        isolated(|| {
            let rt = runtime();
            rt.block_on(async {
                log("single-b\n".into());
                assert!(
                    writes_with("single-b").is_empty(),
                    "not yet: the pass goes on"
                );
                tokio::task::yield_now().await;
                assert_eq!(writes_with("single-b"), vec!["single-b\n".to_string()]);
            });
        });
    }

    #[test]
    fn another_line_is_written_at_once_after_the_batch_before_it() {
        isolated(|| {
            let rt = runtime();
            rt.block_on(async {
                log("order-f access\n".into());
                LineWriter { batch: false }
                    .write_all(b"order-f other\n")
                    .unwrap();
                // One write: the batch first, then the other line.
                assert_eq!(
                    writes_with("order-f"),
                    vec!["order-f access\norder-f other\n".to_string()]
                );
            });
        });
    }

    #[test]
    fn outside_a_runtime_a_line_is_written_at_once() {
        isolated(|| {
            log("direct-c\n".into());
            assert_eq!(writes_with("direct-c"), vec!["direct-c\n".to_string()]);
        });
    }

    #[test]
    fn a_full_batch_is_written_at_once() {
        isolated(|| {
            let rt = runtime();
            rt.block_on(async {
                let line = format!("full-d {}\n", "x".repeat(1000));
                for _ in 0..(BATCH_BYTES / line.len() + 1) {
                    log(line.clone());
                }
                let writes = writes_with("full-d");
                assert_eq!(writes.len(), 1, "one write when the batch filled");
                assert!(writes[0].len() >= BATCH_BYTES);
            });
        });
    }

    #[test]
    fn the_lines_of_a_thread_that_ends_are_written() {
        isolated(|| {
            std::thread::spawn(|| {
                let rt = runtime();
                // The runtime ends before the task that would write the line runs.
                rt.block_on(async { log("ending-e\n".into()) });
                drop(rt);
                assert!(writes_with("ending-e").is_empty());
            })
            .join()
            .unwrap();
            assert_eq!(writes_with("ending-e"), vec!["ending-e\n".to_string()]);
        });
    }

    #[test]
    fn what_stderr_does_not_take_waits_and_keeps_its_order() {
        isolated(|| {
            TAKES.set(Some(10));
            log("partial-h 0123456789\n".into());
            assert_eq!(writes_with("partial-h"), vec!["partial-h ".to_string()]);
            TAKES.set(None);
            log("partial-h next\n".into());
            // The rest of the first line, then the next: one write (other tests write meanwhile).
            assert_eq!(
                writes_with("partial-h"),
                vec![
                    "partial-h ".to_string(),
                    "0123456789\npartial-h next\n".to_string()
                ]
            );
        });
    }

    #[test]
    fn a_stalled_stderr_bounds_what_waits_and_counts_what_is_dropped() {
        isolated(|| {
            TAKES.set(Some(0));
            let before = DROPPED_LINES.get();
            let line = |i: usize| format!("stall-g {i:05} {}\n", "x".repeat(1000));
            let lines = PENDING_BYTES / line(0).len() + 50;
            for i in 0..lines {
                log(line(i));
            }
            assert!(writes_with("stall-g").is_empty(), "stderr took nothing");
            assert!(
                DROPPED_LINES.get() - before >= 49,
                "the lines past the bound are counted"
            );
            // The reader is back: what waited goes out, oldest first, then a line with the count.
            TAKES.set(None);
            log("stall-g back\n".into());
            let out: String = writes_with("stall-g").concat();
            let kept = PENDING_BYTES / line(0).len();
            let expected: String = (0..kept).map(line).collect::<String>() + "stall-g back\n";
            assert_eq!(out, expected);
            // Reported once: how many, then nothing more.
            assert!(report_dropped() >= 49);
            assert_eq!(report_dropped(), 0);
        });
    }

    #[test]
    fn another_threads_line_never_lands_inside_a_cut_one() {
        isolated(|| {
            std::thread::spawn(|| {
                TAKES.set(Some(5));
                log("cut-i from the first thread\n".into());
            })
            .join()
            .unwrap();
            std::thread::spawn(|| log("cut-i from the second\n".into()))
                .join()
                .unwrap();
            let out: String = writes_with("cut-i").concat();
            assert_eq!(out, "cut-i from the first thread\ncut-i from the second\n");
        });
    }
}
