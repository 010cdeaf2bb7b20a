//! Reloading `proxy.toml` without a restart, on `SIGHUP` or the admin listener's `POST /reload`.
//!
//! The new file is loaded and validated in full first: an invalid file changes nothing (the error is
//! logged, counted and, for `POST /reload`, answered). A valid one becomes a new `Runtime` (routes,
//! backends, credentials, and a fresh auth service decision cache) swapped in atomically; requests in
//! flight finish on the runtime they started with. Listener addresses, worker threads, the upstream
//! pool, the answer size limit, logging and the demo bots are fixed for the life of the process: a
//! file that changes them is refused, since applying it needs a restart or a graceful upgrade (`-u`).
//!
//! History: the configuration loaded at start and after each successful reload or rollback is kept,
//! the newest [`HISTORY`] of them, each named by its file's SHA-256 (logged, and in
//! `botbridge_config_info{hash}`). `POST /config/rollback?hash=…` applies a kept one again, through the
//! same checks as a reload (its `env`/`file` secrets read anew); the file on disk is not changed, so
//! the next reload reads the file again.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, source::ConfigSource, Config};
use crate::metrics::Metrics;
use crate::service::Runtime;

/// Configurations kept, the running one among them.
pub const HISTORY: usize = 10;

/// A configuration that ran.
#[derive(Clone)]
pub struct Loaded {
    pub source: Arc<ConfigSource>,
    /// When it was applied.
    pub at: SystemTime,
    /// `start`, `reload` or `rollback`.
    pub how: &'static str,
}

/// Why a rollback did not happen.
#[derive(Debug)]
pub enum RollbackError {
    /// No kept configuration has that hash (or the prefix names several, or is shorter than 8).
    Unknown,
    /// It no longer loads, or differs in what needs a restart.
    Invalid(String),
}

/// Reloads the configuration file into the shared runtime.
pub struct Reloader {
    path: PathBuf,
    runtime: Arc<ArcSwap<Runtime>>,
    /// One reload at a time (SIGHUP and `POST /reload` may race), so the file read last wins.
    lock: std::sync::Mutex<()>,
    /// The configurations that ran, oldest first; the last one runs now.
    history: Mutex<VecDeque<Loaded>>,
}

impl Reloader {
    /// A reloader of `path` into `runtime`.
    pub fn new(path: PathBuf, runtime: Arc<ArcSwap<Runtime>>) -> Self {
        for result in ["ok", "error"] {
            Metrics::global()
                .config_reloads
                .with_label_values(&[result]);
        }
        for result in ["ok", "unknown", "error"] {
            Metrics::global()
                .config_rollbacks
                .with_label_values(&[result]);
        }
        let me = Reloader {
            path,
            history: Mutex::new(VecDeque::new()),
            runtime,
            lock: std::sync::Mutex::new(()),
        };
        me.record(&me.runtime().config, "start");
        me
    }

    /// The configurations kept, oldest first (the last one runs now).
    pub fn history(&self) -> Vec<Loaded> {
        self.kept().iter().cloned().collect()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Loaded>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `config` runs now (a reload of the same file again is not a new entry: repeated
    /// reloads must not push the configurations to roll back to out of the history).
    fn record(&self, config: &Config, how: &'static str) {
        let source = config.source.clone();
        let same = (self.kept().back()).is_some_and(|l| l.source.hash == source.hash);
        if same && how == "reload" {
            return;
        }
        let metrics = Metrics::global();
        metrics.config_info.reset();
        (metrics.config_info)
            .with_label_values(&[short(&source.hash)])
            .set(1);
        let now = SystemTime::now();
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        metrics.config_loaded.set(unix.as_secs() as i64);
        tracing::info!(hash = %source.hash, how, "configuration in force");
        let mut h = self.kept();
        h.push_back(Loaded {
            source,
            at: now,
            how,
        });
        while h.len() > HISTORY {
            h.pop_front();
        }
    }

    /// Applies the kept configuration whose hash is `hash` (or starts with it, at least 8 digits)
    /// again; the hash applied.
    pub fn rollback(&self, hash: &str) -> Result<String, RollbackError> {
        let result = self.try_rollback(hash);
        let label = match &result {
            Ok(_) => "ok",
            Err(RollbackError::Unknown) => "unknown",
            Err(RollbackError::Invalid(_)) => "error",
        };
        Metrics::global()
            .config_rollbacks
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(h) => {
                tracing::warn!(hash = %h, path = %self.path.display(), "configuration rolled back (the file on disk is unchanged: the next reload reads it again)")
            }
            Err(RollbackError::Invalid(e)) => {
                tracing::error!(error = %e, "configuration not rolled back")
            }
            Err(RollbackError::Unknown) => {}
        }
        result
    }

    fn try_rollback(&self, hash: &str) -> Result<String, RollbackError> {
        let _one_at_a_time = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let text = self.find(hash).ok_or(RollbackError::Unknown)?;
        let new = config::parse(&text).map_err(|e| RollbackError::Invalid(e.to_string()))?;
        let applied = new.source.hash.clone();
        self.apply(new).map_err(RollbackError::Invalid)?;
        self.record(&self.runtime().config, "rollback");
        Ok(applied)
    }

    /// The text of the one kept configuration `hash` names.
    fn find(&self, hash: &str) -> Option<String> {
        let hash = hash.to_ascii_lowercase();
        if hash.len() < 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let h = self.kept();
        let mut found = h.iter().filter(|l| l.source.hash.starts_with(&hash));
        let first = found.next()?;
        // Several entries may be the same configuration; a prefix of two different ones is not one.
        found
            .all(|l| l.source.hash == first.source.hash)
            .then(|| first.source.text())
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
            Ok(()) => {
                tracing::info!(path = %self.path.display(), hash = %self.runtime().config.source.hash, "configuration reloaded")
            }
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
        self.apply(new)?;
        self.record(&self.runtime().config, "reload");
        Ok(())
    }

    /// Checks `new` against the running configuration and swaps it in.
    fn apply(&self, new: Config) -> Result<(), String> {
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
        drop(current);
        crate::memory::release_free_memory();
        Ok(())
    }
}

/// The first 12 hex digits of a hash (the metric label).
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
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
