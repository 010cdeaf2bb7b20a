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
//! A write never blocks a worker: a stderr nobody reads (a full pipe) used to stop the proxy. What
//! stderr does not take waits in the thread's batch, up to [`PENDING_BYTES`]; lines beyond are
//! dropped and counted (`botbridge_log_lines_dropped_total`), and a line says how many once stderr
//! takes lines again. A thread that ends waits up to a second for stderr to take its lines.
//!
//! Why: with the access log on (its default), a `write` per request was about 1 µs of system time
//! plus the wake-ups it causes, the largest part of the 4 µs the log cost per request.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use prometheus::IntCounter;
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use crate::log_line::ACCESS_TARGET;

/// Past this many buffered bytes a batch is written at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Most bytes a thread keeps while stderr takes none (its reader stopped reading); lines beyond are
/// dropped and counted.
pub const PENDING_BYTES: usize = 1024 * 1024;

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

/// Offers `bytes` to stderr; the number it took (in unit tests, [`tests::WRITES`] instead).
fn sink(bytes: &[u8]) -> io::Result<usize> {
    #[cfg(test)]
    return tests::sink(bytes);
    #[cfg(not(test))]
    stderr::offer(bytes)
}

/// A thread's unwritten lines, and whether a task to write them is already on its way.
#[derive(Default)]
struct Batch {
    bytes: Mutex<Vec<u8>>,
    scheduled: AtomicBool,
}

impl Batch {
    fn write_out(&self) {
        drain(&mut self.bytes.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// At the thread's end: what stderr takes within a second.
    fn settle(&self) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..10 {
            drain(&mut bytes);
            if bytes.is_empty() || !stderr::wait_writable(100) {
                break;
            }
        }
        if !bytes.is_empty() {
            DROPPED_LINES.inc_by(bytes.iter().filter(|&&b| b == b'\n').count() as u64);
        }
    }
}

/// Writes what stderr takes of `bytes` and keeps the rest; once all is out, reports lines dropped
/// since the last report.
fn drain(bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    match sink(bytes) {
        Ok(n) if n < bytes.len() => {
            bytes.drain(..n);
            return;
        }
        // As the unbatched writer did: an error writing a log line has nowhere to be reported.
        _ => bytes.clear(),
    }
    let dropped = DROPPED_LINES.get();
    let reported = REPORTED.load(Ordering::Relaxed);
    if dropped > reported && REPORTED.swap(dropped, Ordering::Relaxed) < dropped {
        let stamp = crate::timefmt::rfc3339(
            std::time::SystemTime::now(),
            crate::timefmt::Fraction::Micros,
        );
        let notice = format!(
            "{}  WARN botbridge::log_writer: log lines dropped: stderr was not taking them dropped={}\n",
            stamp.as_str(),
            dropped - reported
        );
        let _ = sink(notice.as_bytes());
    }
}

/// Appends `line` unless the thread already holds [`PENDING_BYTES`] stderr has not taken.
fn push(bytes: &mut Vec<u8>, line: &[u8]) {
    if bytes.len() + line.len() > PENDING_BYTES {
        DROPPED_LINES.inc();
    } else {
        bytes.extend_from_slice(line);
    }
}

/// The thread's batch; written out when the thread ends.
struct ThreadBatch(Arc<Batch>);

impl Drop for ThreadBatch {
    fn drop(&mut self) {
        self.0.settle();
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
        BATCH.with(|thread| {
            let batch = &thread.0;
            let mut bytes = batch.bytes.lock().unwrap_or_else(|e| e.into_inner());
            if bytes.len() >= BATCH_BYTES {
                // Full, or stderr has not been taking lines: offer it what is waiting first.
                drain(&mut bytes);
            }
            push(&mut bytes, line);
            if !self.batch || bytes.len() >= BATCH_BYTES {
                drain(&mut bytes);
            } else if !batch.scheduled.swap(true, Ordering::AcqRel) {
                // The runtime's handle is looked up once per batch, not per line.
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        let batch = Arc::clone(batch);
                        runtime.spawn(async move {
                            batch.scheduled.store(false, Ordering::Release);
                            batch.write_out();
                        });
                    }
                    Err(_) => {
                        batch.scheduled.store(false, Ordering::Release);
                        drain(&mut bytes);
                    }
                }
            }
        });
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// stderr as the log's destination: a write there never blocks a worker thread. A pipe, FIFO or
/// terminal is written through a second, non-blocking open file description of the same file
/// (`/proc/self/fd/2`; the one the process inherited stays as it is, shared with its parent), a
/// socket (journald) with `MSG_DONTWAIT`; a regular file as it is, since writing to it does not
/// wait for a reader. What stderr does not take stays in the thread's batch (up to
/// [`PENDING_BYTES`]). stderr is examined at the first line.
mod stderr {
    // Unit tests write to a capture instead.
    #![cfg_attr(test, allow(dead_code))]

    use std::fs::{File, OpenOptions};
    use std::io::{self, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::OnceLock;

    enum Target {
        Blocking,
        NonBlocking(File),
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
            match st.st_mode & libc::S_IFMT {
                libc::S_IFIFO | libc::S_IFCHR => OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open("/proc/self/fd/2")
                    .map_or(Target::Blocking, Target::NonBlocking),
                libc::S_IFSOCK => Target::Socket,
                _ => Target::Blocking,
            }
        })
    }

    /// Writes as much of `bytes` as stderr takes without waiting; how much that was.
    pub(super) fn offer(bytes: &[u8]) -> io::Result<usize> {
        let mut at = 0;
        while at < bytes.len() {
            let n = match target() {
                Target::Blocking => return io::stderr().write_all(bytes).map(|()| bytes.len()),
                Target::NonBlocking(file) => (&*file).write(&bytes[at..]),
                // SAFETY: the pointer and length are those of a live slice.
                Target::Socket => match unsafe {
                    libc::send(
                        2,
                        bytes[at..].as_ptr().cast(),
                        bytes.len() - at,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                } {
                    n if n >= 0 => Ok(n as usize),
                    _ => Err(io::Error::last_os_error()),
                },
            };
            match n {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(at)
    }

    /// Waits up to `ms` for stderr to take bytes; whether it would.
    pub(super) fn wait_writable(ms: i32) -> bool {
        if matches!(target(), Target::Blocking) {
            return false;
        }
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
    }

    #[test]
    fn a_line_is_written_once_its_pass_is_over() {
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
    }

    #[test]
    fn another_line_is_written_at_once_after_the_batch_before_it() {
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
    }

    #[test]
    fn outside_a_runtime_a_line_is_written_at_once() {
        log("direct-c\n".into());
        assert_eq!(writes_with("direct-c"), vec!["direct-c\n".to_string()]);
    }

    #[test]
    fn a_full_batch_is_written_at_once() {
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
    }

    #[test]
    fn the_lines_of_a_thread_that_ends_are_written() {
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
    }

    #[test]
    fn what_stderr_does_not_take_waits_and_keeps_its_order() {
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
    }

    #[test]
    fn a_stalled_stderr_bounds_what_waits_and_counts_what_is_dropped() {
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
        assert!(!writes_with("log lines dropped: stderr was not taking them").is_empty());
    }
}
