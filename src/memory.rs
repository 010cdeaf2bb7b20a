//! Hands memory the allocator holds but no longer uses back to the system, after the few moments
//! that free a lot of it at once: loading a configuration (the parsed TOML of 100,000 credentials
//! is several times the size of what is kept) and replacing one on a reload; and, on every thread
//! that serves connections, once a second ([`tidy_this_thread`]).

/// Returns freed memory to the system now (mimalloc otherwise keeps it for later allocations,
/// which after a load never come: ~1 KB of resident memory per credential stayed).
pub fn release_free_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: `mi_collect` only walks and frees the allocator's own free lists.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// How often a thread that serves connections hands back the memory it freed.
pub const TIDY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(feature = "mimalloc")]
thread_local! {
    /// Whether this thread's tidying task runs.
    static TIDYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Starts, on the calling thread's runtime (once per thread), a task that returns the memory this
/// thread freed to the system every [`TIDY_EVERY`]. mimalloc returns a freed page only after a
/// delay, and only when its thread next allocates or frees: a worker that served 1,000 requests
/// at once and then only holds their idle connections kept ~21 MB it no longer used (bench.py's
/// burst row: 43.4 MB against 22.6 MB with the pages returned at once). Returning them at once
/// instead (`purge_delay = 0`) cost 13.5 µs per request; a collection a second costs nothing
/// measurable. The chat and admin listeners run one single-threaded runtime per worker thread
/// (`work_stealing: false`), so the task stays on the thread it tidies; on a work-stealing runtime
/// it would tidy whichever thread runs it.
pub fn tidy_this_thread() {
    #[cfg(feature = "mimalloc")]
    if !TIDYING.get() {
        TIDYING.set(true);
        tokio::spawn(async {
            loop {
                tokio::time::sleep(TIDY_EVERY).await;
                // SAFETY: as above; not forced: only what is free and due is returned.
                unsafe { libmimalloc_sys::mi_collect(false) };
            }
        });
    }
}
