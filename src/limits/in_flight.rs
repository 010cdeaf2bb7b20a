//! `max_in_flight` per backend: how many requests this instance has at a bot at once. A request that
//! finds every slot taken gets 503 in its caller's dialect at once, without waiting, and never reaches
//! the bot; the slot is given back when the request ends, however it ends.
//!
//! The counters are kept by backend name and handed over on reload, so requests still in flight on the
//! old configuration count against the new limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::Backend;
use crate::error::{ProxyError, Reason};
use crate::metrics::shared::SharedMetrics;

/// One backend's slots.
struct Slots {
    max: AtomicU32,
    used: AtomicU32,
}

/// A taken slot, given back when dropped.
pub struct Slot(Option<Arc<Slots>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.used.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The slots of every backend that has `max_in_flight`, by backend index.
pub struct BackendSlots {
    by_index: Vec<Option<(Arc<Slots>, IntCounter)>>,
    by_name: HashMap<String, Arc<Slots>>,
}

impl BackendSlots {
    /// The slots of `backends`, taking over the counters of `previous` by backend name.
    pub fn new(backends: &[Backend], previous: Option<&BackendSlots>) -> Self {
        let metrics = SharedMetrics::global();
        let mut by_name = HashMap::new();
        let by_index = (backends.iter())
            .map(|b| {
                // A backend without the cap has no series: it could never count, and making one
                // for every backend cost about 0.4 KB each.
                let max = b.max_in_flight?;
                let refusals = metrics.in_flight_refusals.with_label_values(&[&b.name]);
                let slots = previous
                    .and_then(|p| p.by_name.get(&b.name).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(Slots {
                            max: AtomicU32::new(max),
                            used: AtomicU32::new(0),
                        })
                    });
                slots.max.store(max, Ordering::Relaxed);
                by_name.insert(b.name.clone(), slots.clone());
                Some((slots, refusals))
            })
            .collect();
        BackendSlots { by_index, by_name }
    }

    /// Takes a slot of backend `index`, or refuses with 503 when all are taken.
    pub fn enter(&self, index: usize) -> Result<Slot, ProxyError> {
        let Some(Some((slots, refusals))) = self.by_index.get(index) else {
            return Ok(Slot(None));
        };
        let max = slots.max.load(Ordering::Relaxed);
        let taken = slots
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < max).then_some(used + 1)
            });
        match taken {
            Ok(_) => Ok(Slot(Some(slots.clone()))),
            Err(_) => {
                refusals.inc();
                Err(
                    ProxyError::new(503, Reason::Overloaded, "the bot is busy; try again later")
                        .with_header("retry-after", "1"),
                )
            }
        }
    }
}
