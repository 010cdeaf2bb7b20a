//! The human log format, with a fast path for the access event (one per request): the same bytes as
//! tracing-subscriber's default format writes without colours, written with integer formatting
//! and a quoted-string fast path instead of `fmt::Debug` through styled field names. Every other
//! event, and the access event on a terminal or inside a span, goes to the default format.
//!
//! Why: with the access log on (the default `info` filter) the default formatter cost 17.4k of
//! 94.1k instructions per request on the translating path (`bench/callgrind.py --log info`), the
//! largest single item of the path. Then 6.8k, of which the two durations (floats through
//! `fmt::Debug`) were 2k and the timestamp 1k: floats are written by `ryu` where its shortest form
//! is the same text, and the timestamp's date and time are formatted once a second
//! ([`crate::timefmt`]).

use std::cell::Cell;
use std::fmt::{self, Write};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::timefmt::{self, Fraction};

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
        thread_local! {
            /// The line being written, kept for its capacity.
            static LINE: Cell<String> = const { Cell::new(String::new()) };
        }
        // During the thread's teardown the kept buffer may be gone: a new one then.
        let mut line = LINE.try_with(Cell::take).unwrap_or_default();
        line.clear();
        line.push_str(timefmt::rfc3339(SystemTime::now(), Fraction::Micros).as_str());
        line.push(' ');
        line.push_str(level(meta.level()));
        line.push(' ');
        line.push_str(meta.target());
        line.push_str(": ");
        event.record(&mut Fields {
            out: &mut line,
            first: true,
        });
        line.push('\n');
        // One call into the subscriber's buffer rather than one per piece.
        let written = writer.write_str(&line);
        let _ = LINE.try_with(|kept| kept.set(line));
        written
    }
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
struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    fn name(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.out.push(' ');
        }
        let name = field.name();
        self.out.push_str(name.strip_prefix("r#").unwrap_or(name));
        self.out.push('=');
    }

    /// `fmt::Debug` into the line: writing to a `String` cannot fail.
    fn debug(&mut self, value: &dyn fmt::Debug) {
        let _ = write!(self.out, "{value:?}");
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        // `{:?}` of a str escapes nothing in printable ASCII but the quote and the backslash.
        if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.out.push('"');
            self.out.push_str(value);
            self.out.push('"');
        } else {
            self.debug(&value);
        }
    }

    /// `fmt::Debug` writes the shortest text that reads back as the same float, in plain decimal
    /// from 1e-4 up to 1e16 (exponent form outside); `ryu` writes the same digits, and the same
    /// plain form in that range. Anything else goes through `fmt::Debug`.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        let plain = value == 0.0 || (1e-4..1e16).contains(&value.abs());
        if plain && value.is_finite() {
            self.out.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.debug(&value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        self.debug(value);
    }
}

#[cfg(test)]
mod tests {
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
            ("zero", "x", 0.0),
            ("edges", "x", 1e-4),
            ("below", "x", 9.999e-5),
            ("sum", "x", 0.1 + 0.2),
            ("top", "x", 9.999999999999998e15),
            ("huge", "x", 1e16),
            ("neg", "x", -0.00123),
            ("inf", "x", f64::INFINITY),
            ("nan", "x", f64::NAN),
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
        assert_eq!(fast.lines().count(), 14, "{fast}");
        // The 13 access lines took the fast path, the other event the default format.
        assert_eq!(FAST_LINES.with(Cell::get), 13);
        assert_eq!(without_timestamps(&fast), without_timestamps(&default));
        assert!(fast.ends_with('\n'));
    }
}
