//! Structured logs with tracing-subscriber: human or JSON lines on stderr, filtered by `RUST_LOG` if
//! set, else by `[log] filter`. pingora's own `log` records are bridged into the same output.
//! Access lines are written in batches per runtime thread ([`crate::log_writer`]).
//!
//! The access event (target `botbridge::access`, one per request) carries ids, route, dialects,
//! status, durations and sizes; never credentials and never message text. pingora's wire-level
//! header dumps are always filtered out ([`SECRET_GUARDS`]).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// pingora's HTTP/1 code writes whole header blocks at trace and debug level, and those carry the
/// backend's credentials (bearer token, API key, signature). These directives always follow the
/// operator's filter, so no level set in the config or `RUST_LOG` can let them through.
pub const SECRET_GUARDS: &str = "pingora_core::protocols::http::v1=info";

/// The operator's filter with [`SECRET_GUARDS`] appended (the more specific directive wins).
pub fn with_secret_guards(filter: &str) -> String {
    if filter.trim().is_empty() {
        SECRET_GUARDS.to_string()
    } else {
        format!("{filter},{SECRET_GUARDS}")
    }
}

/// Installs the global subscriber. Call once, before the server starts.
pub fn init(format: LogFormat, filter: &str) {
    let chosen = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok());
    let filter = EnvFilter::new(with_secret_guards(chosen.as_deref().unwrap_or(filter)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::log_writer::BatchedStderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Human => builder
            .event_format(crate::log_line::HumanFormat::default())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("botbridge: logging was already set up: {e}");
    }
}
