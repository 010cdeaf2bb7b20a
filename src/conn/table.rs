//! The open connections of one listener, capped: at the cap, the longest-idle connections are
//! closed to make room (as nginx reuses its keep-alive connections), and a new one is refused only
//! when none is idle.
//!
//! The table is touched once when a connection opens and once when it closes; the per-request work
//! is two stores to the connection's own atomics ([`Conn::set_idle`], [`Conn::set_phase`]). Finding
//! the longest-idle connections scans the table, which happens only at the cap and evicts a batch
//! at a time, so a flood of new connections pays one scan per batch, not per connection.
//!
//! Each source address (an IPv6 client's /64, which one subscriber usually holds whole) may hold at
//! most `max_per_address` of them: past that a new one is refused at once, so one host cannot take
//! every place (filling the table then takes `max / max_per_address` addresses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Conn;
use crate::metrics::ClientMetrics;

/// The most idle connections evicted by one scan.
const MAX_EVICT_BATCH: usize = 32;

/// One listener's open connections.
pub struct ConnTable {
    max: usize,
    max_per_address: usize,
    epoch: Instant,
    metrics: ClientMetrics,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
    /// Open connections per source address key (see [`address_key`]), only while above zero.
    per_address: HashMap<u128, u32>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table is full and no connection in it is idle.
    Full,
    /// Its source address already holds `max_per_address` connections.
    AddressFull,
}

/// The key a source address is counted under: an IPv4 address (also when mapped into IPv6) as is,
/// an IPv6 address by its /64.
fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4) as u128,
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

/// A connection's place in the table: it leaves the table (and its close reason is counted) when
/// the guard is dropped.
pub struct ConnGuard {
    table: Arc<ConnTable>,
    id: u64,
    address: Option<u128>,
    /// The connection's shared state.
    pub conn: Arc<Conn>,
}

impl ConnTable {
    /// A table of at most `max` connections, `max_per_address` of them (0: any number) from one
    /// source address, counted under `listener` in the metrics.
    pub fn new(listener: &str, max: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(ConnTable {
            max,
            max_per_address,
            epoch: Instant::now(),
            metrics: ClientMetrics::new(listener),
            open: Mutex::default(),
        })
    }

    /// The table's clock for idle times: microseconds since it was made, plus one (never 0).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Admits a new connection from `source`, evicting idle ones at the cap; refused (and counted)
    /// when every open connection is busy or `source` holds its share already.
    pub fn admit(self: &Arc<Self>, source: Option<IpAddr>) -> Result<ConnGuard, Refused> {
        let conn = Arc::new(Conn::new(self.now()));
        let address = source.filter(|_| self.max_per_address > 0).map(address_key);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = address {
            if open.per_address.get(&key).copied().unwrap_or(0) as usize >= self.max_per_address {
                drop(open);
                self.metrics.refused_per_address.inc();
                return Err(Refused::AddressFull);
            }
        }
        if open.conns.len() >= self.max && self.evict_idle(&mut open) == 0 {
            drop(open);
            self.metrics.refused.inc();
            return Err(Refused::Full);
        }
        open.next_id += 1;
        let id = open.next_id;
        open.conns.insert(id, conn.clone());
        if let Some(key) = address {
            *open.per_address.entry(key).or_default() += 1;
        }
        self.metrics.open.set(open.conns.len() as i64);
        drop(open);
        self.metrics.accepted.inc();
        Ok(ConnGuard {
            table: self.clone(),
            id,
            address,
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
        if let Some(key) = self.address {
            if let Some(n) = open.per_address.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.per_address.remove(&key);
                }
            }
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
    use std::net::IpAddr;

    #[test]
    fn at_the_cap_the_longest_idle_makes_room_and_busy_ones_are_kept() {
        let table = ConnTable::new("test-table", 3, 0);
        let a = table.admit(None).unwrap();
        let b = table.admit(None).unwrap();
        let c = table.admit(None).unwrap();
        a.conn.set_phase(Phase::Body);
        b.conn.set_idle(table.now());
        c.conn.set_idle(table.now() + 10);
        let d = table.admit(None).expect("an idle connection makes room");
        assert!(b.conn.is_evicted(), "the longest idle is evicted");
        assert!(!a.conn.is_evicted() && !c.conn.is_evicted());
        assert_eq!(table.len(), 3);
        c.conn.set_phase(Phase::Head);
        d.conn.set_phase(Phase::Body);
        assert_eq!(
            table.admit(None).err(),
            Some(Refused::Full),
            "all busy: refused"
        );
        drop((a, b, c, d));
        assert!(table.is_empty());
    }

    #[test]
    fn one_address_holds_at_most_its_share_and_gets_it_back_on_close() {
        let table = ConnTable::new("test-table-per-address", 10, 2);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let a = table.admit(ip("10.0.0.1")).unwrap();
        let _b = table.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(
            table.admit(ip("10.0.0.1")).err(),
            Some(Refused::AddressFull),
            "an IPv4-mapped address counts as the IPv4 one"
        );
        let _c = table.admit(ip("10.0.0.2")).unwrap();
        let _d = table.admit(ip("2001:db8:1:2::1")).unwrap();
        let _e = table.admit(ip("2001:db8:1:2::ffff")).unwrap();
        assert_eq!(
            table.admit(ip("2001:db8:1:2:abcd::9")).err(),
            Some(Refused::AddressFull),
            "an IPv6 /64 is one address"
        );
        assert!(table.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        drop(a);
        assert!(table.admit(ip("10.0.0.1")).is_ok(), "a close frees a place");
    }
}
