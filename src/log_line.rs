//! The human log format, with a fast path for the access event (one per request): the same bytes as
//! tracing-subscriber's default format writes without colours, written with integer formatting
//! and a quoted-string fast path instead of `fmt::Debug` through styled field names. Every other
//! event, and the access event on a terminal or inside a span, goes to the default format.
//!
//! Why: with the access log on (the default `info` filter) the default formatter cost 17.4k of
//! 94.1k instructions per request on the translating path (`bench/callgrind.py --log info`), the
//! largest single item of the path.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The access event's target (`crate::metrics::request`).
pub const ACCESS_TARGET: &str = "botbridge::access";

/// The human format: the default `Full` format, with the access event written directly.
#[derive(Default)]
pub struct HumanFormat {
    fallback: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for HumanFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET
            || writer.has_ansi_escapes()
            || ctx.event_scope().is_some()
        {
            return self.fallback.format_event(ctx, writer, event);
        }
        #[cfg(test)]
        tests::FAST_LINES.with(|n| n.set(n.get() + 1));
        timestamp(&mut writer, std::time::SystemTime::now())?;
        writer.write_str(level(meta.level()))?;
        writer.write_char(' ')?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// `2026-12-01T02:56:04.221091Z ` as the default timer writes it (RFC 3339, microseconds, UTC).
fn timestamp(w: &mut Writer<'_>, now: std::time::SystemTime) -> fmt::Result {
    write!(w, "{} ", humantime::format_rfc3339_micros(now))
}

/// The level as the default format pads it to five characters.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// Writes `name=value` pairs separated by spaces, values as `fmt::Debug` would write them.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        let name = field.name();
        self.writer
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.writer.write_char('=')
    }

    fn str(&mut self, field: &Field, value: &str) -> fmt::Result {
        self.name(field)?;
        // `{:?}` of a str escapes nothing in printable ASCII but the quote and the backslash.
        if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.writer.write_char('"')?;
            self.writer.write_str(value)?;
            self.writer.write_char('"')
        } else {
            write!(self.writer, "{value:?}")
        }
    }

    fn int(&mut self, field: &Field, value: impl itoa::Integer) -> fmt::Result {
        self.name(field)?;
        self.writer.write_str(itoa::Buffer::new().format(value))
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.str(field, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.int(field, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.int(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    thread_local! {
        /// Lines the fast path wrote on this thread.
        pub(super) static FAST_LINES: Cell<usize> = const { Cell::new(0) };
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// An access event with every kind of value the fast path writes, awkward ones included.
    fn access_events() {
        for (id, backend, took) in [
            ("83423371-6944-4743-9578-52b3a773d04a", "demo-bot", 2.008243),
            ("with \"quotes\" and \\", "bøt ünïcode", 0.095111999999999),
            ("tab\tand\nnewline\u{1b}[31m", "", 1e-7),
            ("-", "x", 12345678.0),
        ] {
            tracing::info!(
                target: "botbridge::access",
                request_id = id,
                route = "chat",
                backend,
                status = 200u16,
                duration_ms = took,
                bytes_in = 94usize,
                delta = -3i64,
                ok = true,
                r#type = "x",
                shown = %"display",
            );
        }
        tracing::warn!(target: "botbridge::server", caller = %"csml", "not the access event");
    }

    fn logged_by(fast: bool) -> String {
        let capture = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false);
        if fast {
            let sub = builder.event_format(HumanFormat::default()).finish();
            tracing::subscriber::with_default(sub, access_events);
        } else {
            tracing::subscriber::with_default(builder.finish(), access_events);
        }
        capture.text()
    }

    /// The timestamps differ between two runs; everything after them must not.
    fn without_timestamps(text: &str) -> Vec<&str> {
        text.lines()
            .map(|line| {
                let (time, rest) = line.split_once(' ').unwrap();
                assert!(
                    humantime::parse_rfc3339(time).is_ok() && time.len() == 27,
                    "{time}"
                );
                rest
            })
            .collect()
    }

    #[test]
    fn the_access_line_is_byte_for_byte_the_default_formats() {
        let (fast, default) = (logged_by(true), logged_by(false));
        assert_eq!(fast.lines().count(), 5, "{fast}");
        // The four access lines took the fast path, the other event the default format.
        assert_eq!(FAST_LINES.with(Cell::get), 4);
        assert_eq!(without_timestamps(&fast), without_timestamps(&default));
        assert!(fast.ends_with('\n'));
    }

    #[test]
    fn the_timestamp_is_the_default_timers() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_764_558_964_221_091);
        let mut out = String::new();
        timestamp(&mut Writer::new(&mut out), at).unwrap();
        assert_eq!(out, "2025-12-01T03:16:04.221091Z ");
    }
}
