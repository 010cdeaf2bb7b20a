//! Structured logs with tracing-subscriber: human or JSON lines on stderr, filtered by `RUST_LOG` if
//! set, else by `[log] filter`. pingora's own `log` records are bridged into the same output.
//!
//! The access event (target `botbridge::access`, one per request) carries ids, route, dialects,
//! status, durations and sizes; never credentials and never message text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, before the server starts.
pub fn init(format: LogFormat, filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("botbridge: logging was already set up: {e}");
    }
}
