//! Reloading `proxy.toml` without a restart, on `SIGHUP` or the admin listener's `POST /reload`.
//!
//! The new file is loaded and validated in full first: an invalid file changes nothing (the error is
//! logged, counted and, for `POST /reload`, answered). A valid one becomes a new `Runtime` (routes,
//! backends, credentials, and a fresh auth service decision cache) swapped in atomically; requests in
//! flight finish on the runtime they started with. Listener addresses, worker threads, the upstream
//! pool, the answer size limit, logging and the demo bots are fixed for the life of the process: a
//! file that changes them is refused, since applying it needs a restart or a graceful upgrade (`-u`).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config;
use crate::metrics::Metrics;
use crate::service::Runtime;

/// Reloads the configuration file into the shared runtime.
pub struct Reloader {
    path: PathBuf,
    runtime: Arc<ArcSwap<Runtime>>,
    /// One reload at a time (SIGHUP and `POST /reload` may race), so the file read last wins.
    lock: std::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader of `path` into `runtime`.
    pub fn new(path: PathBuf, runtime: Arc<ArcSwap<Runtime>>) -> Self {
        for result in ["ok", "error"] {
            Metrics::global()
                .config_reloads
                .with_label_values(&[result]);
        }
        Reloader {
            path,
            runtime,
            lock: std::sync::Mutex::new(()),
        }
    }

    /// The runtime in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Loads, validates and applies the file. On error nothing changes.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        Metrics::global()
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(()) => tracing::info!(path = %self.path.display(), "configuration reloaded"),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "configuration not reloaded")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), String> {
        let _one_at_a_time = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let new = config::load(&self.path).map_err(|e| e.to_string())?;
        config::private_dir::check_all(&new).map_err(|e| e.to_string())?;
        let current = self.runtime.load_full();
        let fixed = current.config.restart_only_differences(&new);
        if !fixed.is_empty() {
            return Err(format!(
                "{} cannot change while running: restart, or upgrade with -u",
                fixed.join(", ")
            ));
        }
        let new = Arc::new(Runtime::new(Arc::new(new), Some(&current)));
        // The new runtime's cache starts empty; the other instances are told to empty theirs.
        new.publish_cache_clear();
        self.runtime.store(new);
        Ok(())
    }
}

/// Reloads on `SIGHUP` until shutdown.
pub struct SighupListener(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for SighupListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; use POST /reload on the admin listener");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let _ = self.0.reload();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
