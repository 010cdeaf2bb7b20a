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
//! Why: with the access log on (its default), a `write` per request was about 1 µs of system time
//! plus the wake-ups it causes, the largest part of the 4 µs the log cost per request.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use crate::log_line::ACCESS_TARGET;

/// Past this many buffered bytes a batch is written at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// One `write` to stderr (in unit tests, to [`tests::WRITES`] instead).
fn sink(bytes: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    {
        tests::WRITES.lock().unwrap().push(bytes.to_vec());
        Ok(())
    }
    #[cfg(not(test))]
    io::stderr().write_all(bytes)
}

/// A thread's unwritten lines, and whether a task to write them is already on its way.
#[derive(Default)]
struct Batch {
    bytes: Mutex<Vec<u8>>,
    scheduled: AtomicBool,
}

impl Batch {
    fn write_out(&self) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if !bytes.is_empty() {
            // As the unbatched writer did: an error writing a log line has nowhere to be reported.
            let _ = sink(&bytes);
            bytes.clear();
        }
    }
}

/// The thread's batch; written out when the thread ends.
struct ThreadBatch(Arc<Batch>);

impl Drop for ThreadBatch {
    fn drop(&mut self) {
        self.0.write_out();
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
            if !self.batch {
                batch.write_out();
                return sink(line);
            }
            let full = {
                let mut bytes = batch.bytes.lock().unwrap_or_else(|e| e.into_inner());
                bytes.extend_from_slice(line);
                bytes.len() >= BATCH_BYTES
            };
            if full {
                batch.write_out();
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
                        batch.write_out();
                    }
                }
            }
            Ok(())
        })?;
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Every `write` the writer made, in order (all tests' together: each looks for its own lines).
    pub(crate) static WRITES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

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
            assert_eq!(
                writes_with("order-f"),
                vec![
                    "order-f access\n".to_string(),
                    "order-f other\n".to_string()
                ]
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
}
