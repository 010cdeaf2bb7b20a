//! Admission control past saturation (`[server] max_queue_ms`): when requests wait too long for
//! their worker thread, new ones are refused at once (503 in the caller's dialect, with
//! `Retry-After`) instead of queueing behind the others, so what is admitted keeps a bounded
//! latency.
//!
//! The queueing is measured, not guessed: each worker thread (a runtime of its own, without work
//! stealing) runs a probe that asks to wake every [`PERIOD`] and records how late it woke. A
//! task woken on time still waits its turn behind every task that is ready before it, so the delay
//! is the time the thread's ready work takes to get through: the wait a new request would have. The
//! delay is smoothed (an exponentially weighted average over about 8 probes, 80 ms), and
//! requests are shed with a probability that rises from 0 at `max_queue_ms` to 1 at twice it, so the
//! load settles at the limit instead of swinging between all and nothing (as Node's `toobusy`
//! does). Counted in `botbridge_requests_shed_total`; the smoothed delay is the gauge
//! `botbridge_worker_queue_delay_seconds` (as the last probe of any worker thread measured it).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::{register_gauge, register_int_counter, Gauge, IntCounter};

/// How often each worker thread's probe wakes.
pub const PERIOD: Duration = Duration::from_millis(10);

thread_local! {
    /// This worker thread's smoothed delay, microseconds.
    static DELAY_US: Cell<u64> = const { Cell::new(0) };
    /// Whether this worker thread's probe runs.
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

struct Metrics {
    shed: IntCounter,
    delay: Gauge,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        shed: register_int_counter!(
            "botbridge_requests_shed_total",
            "Requests refused with 503 because their worker thread's queue was longer than server.max_queue_ms."
        )
        .expect("registers once"),
        delay: register_gauge!(
            "botbridge_worker_queue_delay_seconds",
            "How late a worker thread's probe woke (smoothed): the wait a new request would have."
        )
        .expect("registers once"),
    })
}

/// Whether to refuse a new request on this worker thread now (`max_queue` zero: never). Starts this
/// thread's probe on its first call.
pub fn shed(max_queue: Duration) -> bool {
    if max_queue.is_zero() {
        return false;
    }
    if !PROBING.get() {
        PROBING.set(true);
        tokio::spawn(probe());
    }
    let max = max_queue.as_micros() as u64;
    let delay = DELAY_US.get();
    if delay <= max {
        return false;
    }
    let p = ((delay - max) as f64 / max as f64).min(1.0);
    let refused = fastrand::f64() < p;
    if refused {
        metrics().shed.inc();
    }
    refused
}

/// How long a refused caller should wait before trying again.
pub fn retry_after(max_queue: Duration) -> Duration {
    (max_queue * 4).max(Duration::from_secs(1))
}

/// Wakes every [`PERIOD`] on this thread's runtime and records how late.
async fn probe() {
    let m = metrics();
    loop {
        let asked = Instant::now();
        tokio::time::sleep(PERIOD).await;
        let late = asked.elapsed().saturating_sub(PERIOD).as_micros() as u64;
        let smoothed = (DELAY_US.get() * 7 + late) / 8;
        DELAY_US.set(smoothed);
        m.delay.set(smoothed as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_sheds_and_retry_after_is_at_least_a_second() {
        assert!(!shed(Duration::ZERO));
        assert_eq!(
            retry_after(Duration::from_millis(50)),
            Duration::from_secs(1)
        );
        assert_eq!(retry_after(Duration::from_secs(2)), Duration::from_secs(8));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_thread_whose_work_waits_sheds_and_one_that_keeps_up_does_not() {
        let max = Duration::from_millis(20);
        assert!(!shed(max), "no delay measured yet");
        // Idle: the probe wakes on time.
        tokio::time::sleep(PERIOD * 12).await;
        assert!(
            (0..100).all(|_| !shed(max)),
            "an idle thread admits everything"
        );
        // Busy: ready tasks that each hold the thread for 5 ms, always 30 of them queued.
        let busy = tokio::spawn(async {
            loop {
                for _ in 0..30 {
                    tokio::spawn(async { std::thread::sleep(Duration::from_millis(5)) });
                }
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        let refused = (0..1000).filter(|_| shed(max)).count();
        busy.abort();
        assert!(
            refused > 900,
            "a queue of ~150 ms sheds nearly all: {refused} of 1000"
        );
    }
}
