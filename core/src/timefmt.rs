//! RFC 3339 UTC timestamps (`2026-12-01T02:56:04.221Z`), the same text as `humantime` writes, with
//! the date and time of day formatted once a second per thread and only the fraction per call.
//!
//! A time before 1970 (a clock set far back) is written as 1970's first instant; `humantime` would
//! panic.
//!
//! Why: the access log line and some dialects' answers each write one per request; through `humantime`
//! each cost about 450 instructions of 91k on the translating path (`bench/callgrind.py`).

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Digits after the point.
#[derive(Clone, Copy)]
pub enum Fraction {
    Millis,
    Micros,
}

/// A formatted timestamp, on the stack.
pub struct Stamp {
    text: [u8; 27],
    len: usize,
}

impl Stamp {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len]).expect("ASCII digits")
    }
}

/// `t` as RFC 3339 in UTC with the given fraction and a `Z`.
pub fn rfc3339(t: SystemTime, fraction: Fraction) -> Stamp {
    let mut stamp = Stamp {
        text: [0; 27],
        len: 0,
    };
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let prefix = second_prefix(since.as_secs());
    let (value, digits) = match fraction {
        Fraction::Millis => (since.subsec_millis(), 3),
        Fraction::Micros => (since.subsec_micros(), 6),
    };
    stamp.text[..19].copy_from_slice(&prefix);
    stamp.text[19] = b'.';
    let mut n = value;
    for slot in stamp.text[20..20 + digits].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    stamp.text[20 + digits] = b'Z';
    stamp.len = 21 + digits;
    stamp
}

/// `t` as RFC 3339 in UTC with milliseconds.
pub fn rfc3339_millis(t: SystemTime) -> String {
    rfc3339(t, Fraction::Millis).as_str().to_string()
}

/// `2026-12-01T02:56:04` for a second since 1970, from this thread's last second when it is the
/// same.
fn second_prefix(secs: u64) -> [u8; 19] {
    thread_local! {
        static LAST: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let (last, mut prefix) = LAST.get();
    if last != secs {
        let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        // `2026-12-01T02:56:04Z`: the 19 characters before the `Z`.
        prefix.copy_from_slice(&whole.to_string().as_bytes()[..19]);
        LAST.set((secs, prefix));
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_as_humantime() {
        // Same second twice (remembered), the next, a whole second, a leap day, 1970.
        let times = [
            UNIX_EPOCH + Duration::from_micros(1_764_558_964_221_091),
            UNIX_EPOCH + Duration::from_micros(1_764_558_964_000_007),
            UNIX_EPOCH + Duration::from_micros(1_764_558_965_999_999),
            UNIX_EPOCH + Duration::from_micros(1_764_558_966_000_000),
            UNIX_EPOCH + Duration::from_secs(1_709_164_800),
            UNIX_EPOCH,
        ];
        for t in times {
            let micros = rfc3339(t, Fraction::Micros);
            assert_eq!(
                micros.as_str(),
                humantime::format_rfc3339_micros(t).to_string()
            );
            assert_eq!(
                rfc3339_millis(t),
                humantime::format_rfc3339_millis(t).to_string()
            );
        }
        let early = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(rfc3339_millis(early), "1970-01-01T00:00:00.000Z");
    }
}
