//! The open connections of one listener, capped: at the cap, the longest-idle connections are
//! closed to make room (as nginx reuses its keep-alive connections), and a new one is refused only
//! when none is idle.
//!
//! The table is touched once when a connection opens and once when it closes; the per-request work
//! is two stores to the connection's own atomics ([`Conn::set_idle`], [`Conn::set_phase`]). Finding
//! the longest-idle connections scans the table, which happens only at the cap and evicts a batch
//! at a time, so a flood of new connections pays one scan per batch, not per connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Conn;
use crate::metrics::ClientMetrics;

/// The most idle connections evicted by one scan.
const MAX_EVICT_BATCH: usize = 32;

/// One listener's open connections.
pub struct ConnTable {
    max: usize,
    epoch: Instant,
    metrics: ClientMetrics,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
}

/// A connection's place in the table: it leaves the table (and its close reason is counted) when
/// the guard is dropped.
pub struct ConnGuard {
    table: Arc<ConnTable>,
    id: u64,
    /// The connection's shared state.
    pub conn: Arc<Conn>,
}

impl ConnTable {
    /// A table of at most `max` connections, counted under `listener` in the metrics.
    pub fn new(listener: &str, max: usize) -> Arc<Self> {
        Arc::new(ConnTable {
            max,
            epoch: Instant::now(),
            metrics: ClientMetrics::new(listener),
            open: Mutex::default(),
        })
    }

    /// The table's clock for idle times: microseconds since it was made, plus one (never 0).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Admits a new connection, evicting idle ones at the cap. None: refused (counted), every
    /// open connection is busy.
    pub fn admit(self: &Arc<Self>) -> Option<ConnGuard> {
        let conn = Arc::new(Conn::new(self.now()));
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.conns.len() >= self.max && self.evict_idle(&mut open) == 0 {
            drop(open);
            self.metrics.refused.inc();
            return None;
        }
        open.next_id += 1;
        let id = open.next_id;
        open.conns.insert(id, conn.clone());
        self.metrics.open.set(open.conns.len() as i64);
        drop(open);
        self.metrics.accepted.inc();
        Some(ConnGuard {
            table: self.clone(),
            id,
            conn,
        })
    }

    /// Evicts up to a batch of the longest-idle connections (a 32nd of the cap, 1 to 32) and
    /// removes them from the table; returns how many.
    fn evict_idle(&self, open: &mut Open) -> usize {
        let mut idle: Vec<(u64, u64)> = (open.conns.iter())
            .filter(|(_, c)| c.phase().is_waiting())
            .map(|(&id, c)| (c.idle_since.load(std::sync::atomic::Ordering::Relaxed), id))
            .filter(|&(since, _)| since != 0)
            .collect();
        let batch = (self.max / 32).clamp(1, MAX_EVICT_BATCH).min(idle.len());
        if batch == 0 {
            return 0;
        }
        idle.select_nth_unstable(batch - 1);
        let mut evicted = 0;
        for &(since, id) in &idle[..batch] {
            if open.conns.get(&id).is_some_and(|c| c.evict(since)) {
                open.conns.remove(&id);
                evicted += 1;
            }
        }
        self.metrics.open.set(open.conns.len() as i64);
        evicted
    }

    /// How many connections are in the table.
    pub fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = (self.table.open).lock().unwrap_or_else(|e| e.into_inner());
        if open.conns.remove(&self.id).is_some() {
            self.table.metrics.open.set(open.conns.len() as i64);
        }
        drop(open);
        if let Some(reason) = self.conn.close_reason() {
            self.table.metrics.closed(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Phase;

    #[test]
    fn at_the_cap_the_longest_idle_makes_room_and_busy_ones_are_kept() {
        let table = ConnTable::new("test-table", 3);
        let a = table.admit().unwrap();
        let b = table.admit().unwrap();
        let c = table.admit().unwrap();
        a.conn.set_phase(Phase::Body);
        b.conn.set_idle(table.now());
        c.conn.set_idle(table.now() + 10);
        let d = table.admit().expect("an idle connection makes room");
        assert!(b.conn.is_evicted(), "the longest idle is evicted");
        assert!(!a.conn.is_evicted() && !c.conn.is_evicted());
        assert_eq!(table.len(), 3);
        c.conn.set_phase(Phase::Head);
        d.conn.set_phase(Phase::Body);
        assert!(table.admit().is_none(), "all busy: refused");
        drop((a, b, c, d));
        assert!(table.is_empty());
    }
}
