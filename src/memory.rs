//! Hands memory the allocator holds but no longer uses back to the system, after the few moments
//! that free a lot of it at once: loading a configuration (the parsed TOML of 100,000 credentials
//! is several times the size of what is kept) and replacing one on a reload.

/// Returns freed memory to the system now (mimalloc otherwise keeps it for later allocations,
/// which after a load never come: ~1 KB of resident memory per credential stayed).
pub fn release_free_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: `mi_collect` only walks and frees the allocator's own free lists.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
