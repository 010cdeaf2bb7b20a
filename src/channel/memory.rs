//! One channel conversation in this instance's memory: its owner and user, and its last activities,
//! held to a count and a byte budget (the oldest go first).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

use super::Page;

/// One conversation.
pub struct Log {
    /// Who may use it (its route and credential).
    pub owner: String,
    /// The user its tokens were issued for.
    pub user: String,
    state: Mutex<LogState>,
    /// The place of the last activity, for streams to wait on.
    last: watch::Sender<u64>,
}

struct LogState {
    /// The place the next activity gets (the first is 1).
    next: u64,
    items: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// How much a conversation keeps: `count` activities and `bytes` bytes at most (the newest
/// activity is kept whatever its size).
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub count: usize,
    pub bytes: usize,
}

impl Log {
    pub fn new(owner: &str, user: &str) -> Self {
        Log {
            owner: owner.to_owned(),
            user: user.to_owned(),
            state: Mutex::new(LogState {
                next: 1,
                items: VecDeque::new(),
                bytes: 0,
            }),
            last: watch::channel(0).0,
        }
    }

    /// Adds activities at the next places: `make(first)` writes them, the first at place `first`.
    /// Returns the first place and how many were added.
    pub fn append(&self, keep: Keep, make: impl FnOnce(u64) -> Vec<Vec<u8>>) -> (u64, usize) {
        let (first, added, last) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let first = s.next;
            let made = make(first);
            let added = made.len();
            for a in made {
                let seq = s.next;
                s.next += 1;
                s.bytes += a.len();
                s.items.push_back((seq, Bytes::from(a)));
            }
            while s.items.len() > keep.count || (s.bytes > keep.bytes && s.items.len() > 1) {
                let (_, gone) = s.items.pop_front().expect("not empty");
                s.bytes -= gone.len();
            }
            (first, added, s.next - 1)
        };
        self.last.send_replace(last);
        (first, added)
    }

    /// The activities after place `watermark` (all kept for `None`), at most `max` and about
    /// `max_bytes` (at least one).
    pub fn after(&self, watermark: Option<u64>, max: usize, max_bytes: usize) -> Page {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from = watermark.unwrap_or(0);
        let start = s.items.partition_point(|(seq, _)| *seq <= from);
        let (mut activities, mut size, mut last) = (Vec::new(), 0, None);
        for (seq, a) in s.items.range(start..).take(max) {
            if !activities.is_empty() && size + a.len() > max_bytes {
                break;
            }
            size += a.len();
            activities.push(a.clone());
            last = Some(*seq);
        }
        // Nothing new: the watermark stays, but never past the last place there is.
        let watermark = last.unwrap_or(from.min(s.next - 1));
        Page {
            activities,
            watermark: watermark.to_string(),
        }
    }

    /// Follows the place of the last activity.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// Its weight for the store's budget.
    pub fn weight(&self) -> u32 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.bytes + self.user.len() + self.owner.len() + 256).min(u32::MAX as usize) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(f: u64, n: u64) -> Vec<Vec<u8>> {
        (f..f + n).map(|i| format!("a{i}").into_bytes()).collect()
    }

    #[test]
    fn pages_follow_watermarks_and_the_oldest_go_first() {
        let log = Log::new("o", "u");
        let keep = Keep {
            count: 3,
            bytes: 1 << 20,
        };
        assert_eq!(log.append(keep, |f| made(f, 2)), (1, 2));
        let p = log.after(None, 100, 1 << 20);
        assert_eq!((p.activities.len(), p.watermark.as_str()), (2, "2"));
        assert_eq!(log.after(Some(2), 100, 1 << 20).activities.len(), 0);
        log.append(keep, |f| made(f, 2));
        let p = log.after(Some(1), 100, 1 << 20);
        assert_eq!(
            p.activities,
            vec![Bytes::from("a2"), Bytes::from("a3"), Bytes::from("a4")]
        );
        let p = log.after(None, 1, 1 << 20);
        assert_eq!(
            (p.activities, p.watermark.as_str()),
            (vec![Bytes::from("a2")], "2")
        );
        // A watermark from the future reads nothing and comes back as the last place.
        assert_eq!(log.after(Some(99), 100, 1 << 20).watermark, "4");
        // Pages are held to a byte budget, at least one activity each.
        let p = log.after(None, 100, 3);
        assert_eq!((p.activities.len(), p.watermark.as_str()), (1, "2"));
    }

    #[test]
    fn a_conversation_is_held_to_its_byte_budget() {
        let log = Log::new("o", "u");
        let keep = Keep {
            count: 100,
            bytes: 10,
        };
        log.append(keep, |_| vec![vec![b'x'; 6], vec![b'y'; 6]]);
        let p = log.after(None, 100, 1 << 20);
        assert_eq!(p.activities, vec![Bytes::from(vec![b'y'; 6])]);
        log.append(keep, |_| vec![vec![b'z'; 50]]);
        assert_eq!(
            log.after(None, 100, 1 << 20).activities.len(),
            1,
            "the newest stays"
        );
    }
}
