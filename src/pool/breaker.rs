//! A backend's circuit breaker (the project's own; pingora-load-balancing has none).
//!
//! **Closed**: requests go through. It **opens** when a request finds no endpoint up, or when, with
//! `[backends.breaker] error_rate`, the share of failed requests (a transport failure or a 5xx after
//! all tries) over the last `window_s` reaches the rate with at least `min_requests` requests in it.
//! **Open**: requests fail fast (503, `Retry-After` the time left) for `open_s`. Then **half-open**:
//! one request at a time is let through as a probe (others still fail fast); a probe that gets an
//! answer closes the circuit, one that fails (or finds no endpoint up) opens it for `open_s` again.
//!
//! The closed state is one atomic load per request; the window is a small ring of per-second-ish
//! buckets behind a mutex, touched only when the error-rate trigger is configured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::pool::BreakerSettings;
use crate::metrics::Metrics;

/// Buckets the error-rate window is cut into.
const BUCKETS: usize = 10;

/// The circuit of one backend (kept across reloads).
pub struct Breaker {
    /// Not closed: the fast path's only question.
    tripped: AtomicBool,
    state: Mutex<State>,
    /// The backend's name, for its series: found at each transition (rare), not held by every
    /// backend (four series each, most never moved: ~1 KB a backend with thousands of them).
    backend: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { probing: bool },
}

struct State {
    phase: Phase,
    /// (bucket number, requests, failures): made at the first count, so a backend without an
    /// error rate (the default) does not hold 240 bytes it never uses.
    window: Option<Box<[(u64, u64, u64); BUCKETS]>>,
}

/// Leave to send one request.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Breaker {
    /// The closed circuit of `backend`.
    pub fn new(backend: &str) -> Self {
        Breaker {
            tripped: AtomicBool::new(false),
            state: Mutex::new(State {
                phase: Phase::Closed,
                window: None,
            }),
            backend: backend.into(),
        }
    }

    /// Counts a move to `to` (one of `CIRCUIT_STATES`) and sets the open gauge.
    fn moved(&self, to: &str, open: bool) {
        let m = &Metrics::global().pool;
        (m.circuit_transitions)
            .with_label_values(&[&self.backend, to])
            .inc();
        (m.circuit_open)
            .with_label_values(&[&self.backend])
            .set(i64::from(open));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave to send a request at `now_ms`, or how long to wait (`Retry-After`).
    pub fn admit(&self, now_ms: u64) -> Result<Permit<'_>, Duration> {
        if !self.tripped.load(Ordering::Relaxed) {
            return Ok(self.permit(false));
        }
        let mut st = self.lock();
        match st.phase {
            Phase::Closed => Ok(self.permit(false)),
            Phase::Open { until_ms } if now_ms < until_ms => {
                Err(Duration::from_millis(until_ms - now_ms))
            }
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                if matches!(st.phase, Phase::Open { .. }) {
                    self.moved("half_open", true);
                }
                st.phase = Phase::HalfOpen { probing: true };
                Ok(self.permit(true))
            }
            Phase::HalfOpen { probing: true } => Err(Duration::from_secs(1)),
        }
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            done: false,
        }
    }

    /// `closed`, `open` or `half_open`, for `GET /backends`.
    pub fn state_name(&self) -> &'static str {
        match self.state() {
            (false, _) => "closed",
            (true, false) => "open",
            (true, true) => "half_open",
        }
    }

    /// (open or half-open, half-open) now.
    pub fn state(&self) -> (bool, bool) {
        match self.lock().phase {
            Phase::Closed => (false, false),
            Phase::Open { .. } => (true, false),
            Phase::HalfOpen { .. } => (true, true),
        }
    }

    fn open(&self, st: &mut State, now_ms: u64, s: &BreakerSettings) {
        if !matches!(st.phase, Phase::Open { .. }) {
            self.moved("open", true);
        }
        st.phase = Phase::Open {
            until_ms: now_ms + s.open.as_millis() as u64,
        };
        self.tripped.store(true, Ordering::Relaxed);
    }

    fn close(&self, st: &mut State) {
        st.phase = Phase::Closed;
        st.window = None;
        self.tripped.store(false, Ordering::Relaxed);
        self.moved("closed", false);
    }

    /// A request's outcome in the window; opens the circuit if the error rate is reached.
    fn count(&self, st: &mut State, failed: bool, now_ms: u64, s: &BreakerSettings) {
        let Some(rate) = s.error_rate else { return };
        let width = (s.window.as_millis() as u64 / BUCKETS as u64).max(1);
        let bucket = now_ms / width;
        let window = st
            .window
            .get_or_insert_with(|| Box::new([(0, 0, 0); BUCKETS]));
        let slot = &mut window[(bucket % BUCKETS as u64) as usize];
        if slot.0 != bucket {
            *slot = (bucket, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u64::from(failed);
        let recent = window.iter().filter(|b| b.0 + BUCKETS as u64 > bucket);
        let (total, failures) = recent.fold((0, 0), |(t, f), b| (t + b.1, f + b.2));
        if total >= s.min_requests && failures as f64 >= rate * total as f64 {
            self.open(st, now_ms, s);
        }
    }
}

impl Permit<'_> {
    /// The request got an answer (`failed`: a transport failure or a 5xx after all tries).
    pub fn finish(mut self, failed: bool, now_ms: u64, s: &BreakerSettings) {
        self.done = true;
        let b = self.breaker;
        if !self.probe && s.error_rate.is_none() {
            return;
        }
        let mut st = b.lock();
        match (self.probe, st.phase) {
            (true, _) if failed => b.open(&mut st, now_ms, s),
            (true, _) => b.close(&mut st),
            (false, Phase::Closed) => b.count(&mut st, failed, now_ms, s),
            // Sent before the circuit opened: it no longer counts.
            (false, _) => {}
        }
    }

    /// The request found no endpoint up: the circuit opens (again).
    pub fn no_endpoint(mut self, now_ms: u64, s: &BreakerSettings) -> Duration {
        self.done = true;
        let mut st = self.breaker.lock();
        self.breaker.open(&mut st, now_ms, s);
        s.open
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // A probe whose request was abandoned lets the next request probe instead.
        if self.probe && !self.done {
            let mut st = self.breaker.lock();
            if st.phase == (Phase::HalfOpen { probing: true }) {
                st.phase = Phase::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: Option<f64>) -> BreakerSettings {
        BreakerSettings {
            error_rate: rate,
            window: Duration::from_secs(10),
            min_requests: 4,
            open: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_error_rate_opens_it_and_a_probe_closes_it() {
        let (b, s) = (Breaker::new("unit-rate"), settings(Some(0.5)));
        for (i, failed) in [false, true, false].into_iter().enumerate() {
            b.admit(i as u64).unwrap().finish(failed, i as u64, &s);
        }
        assert_eq!(b.state(), (false, false), "below min_requests");
        b.admit(3).unwrap().finish(true, 3, &s);
        assert_eq!(b.state(), (true, false), "2 failures of 4");
        assert_eq!(b.admit(1_003).err(), Some(Duration::from_secs(4)));
        let probe = b.admit(5_003).expect("a probe after open_s");
        assert_eq!(b.state(), (true, true));
        assert_eq!(
            b.admit(5_004).err(),
            Some(Duration::from_secs(1)),
            "one probe at a time"
        );
        probe.finish(true, 5_010, &s);
        assert_eq!(b.state(), (true, false), "a failed probe opens it again");
        b.admit(10_010).unwrap().finish(false, 10_020, &s);
        assert_eq!(b.state(), (false, false));
        b.admit(10_030).unwrap().finish(true, 10_030, &s);
        assert_eq!(b.state(), (false, false), "the window restarted on closing");
    }

    #[test]
    fn old_buckets_leave_the_window() {
        let (b, s) = (Breaker::new("unit-window"), settings(Some(0.5)));
        for t in 0..3 {
            b.admit(t).unwrap().finish(true, t, &s);
        }
        // 11 s later the failures are out of the window.
        for t in 0..3 {
            b.admit(11_000 + t).unwrap().finish(false, 11_000 + t, &s);
        }
        b.admit(11_010).unwrap().finish(true, 11_010, &s);
        assert_eq!(b.state(), (false, false));
    }

    #[test]
    fn no_endpoint_opens_it_without_an_error_rate_and_an_abandoned_probe_frees_the_slot() {
        let (b, s) = (Breaker::new("unit-down"), settings(None));
        assert_eq!(b.admit(0).unwrap().no_endpoint(0, &s), s.open);
        assert!(b.admit(1).is_err());
        drop(b.admit(5_000).expect("probe"));
        let probe = b.admit(5_001).expect("the slot is free again");
        probe.finish(false, 5_002, &s);
        assert_eq!(b.state(), (false, false));
    }
}
