//! The delivery journal's records and their framing: what an accepted async request still owes its
//! receiver, written down before the caller is answered, and read back after a crash.
//!
//! - A record is one frame: its length (u32, little endian), the CRC-32 of its payload (u32, little
//!   endian), then the payload, a JSON [`Record`]. Reading stops at the first frame that is cut
//!   short (a write the crash interrupted) or whose checksum does not match; [`read`] says which.
//! - A job is written when it is accepted ([`JobRecord`] without `messages`: the bot has not
//!   answered) and again when the bot has answered (with them); [`Record::Done`] says how many of
//!   its messages are done (delivered or dead-lettered), [`Record::Finished`] that nothing is owed.
//! - [`pending`] replays records into what is still owed, in the order jobs were first written (so
//!   each conversation keeps its order). A job whose bot never answered is *interrupted*: the bot may
//!   have been asked, so it is never asked again (a chat message is never sent twice); what is owed
//!   instead is the caller dialect's failure notice written with it (`interrupt`), if it has one.
//!
//! The same [`JobRecord`] is the payload of a Redis stream entry (the shared journal) and a line of
//! the spool; only the file journal frames it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The bytes before a payload: length and checksum.
pub const HEADER: usize = 8;

/// A frame's payload may not exceed this (a longer length field is corruption, not a record).
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// One message owed to a receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMessage {
    /// The `idempotency-key`: the same on every attempt, by every process.
    pub key: String,
    pub body: String,
    /// Unix milliseconds after which it goes to the dead letters.
    pub deadline_ms: u64,
    #[serde(default)]
    pub attempts: u32,
}

/// An async request's deliveries as journaled (and spooled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id (a UUID): its messages' keys start with it.
    #[serde(default)]
    pub job: String,
    /// The credential, by name (`<dialect>:<name>`): its signing key and allow-list are looked up
    /// in the configuration of the process that delivers.
    pub credential: String,
    /// The callback URL as the caller gave it (checked again before delivering).
    pub url: String,
    pub request_id: String,
    /// The lane its deliveries keep order in (callback URL and user).
    pub conversation: String,
    /// `None` while the bot has not answered; then the messages still owed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<PendingMessage>>,
    /// What is delivered if the bot's answer is never journaled (the caller dialect's failure
    /// notice; empty when it has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interrupt: Vec<String>,
    /// Unix milliseconds after which an interrupted job's notice is not delivered any more.
    #[serde(default)]
    pub deadline_ms: u64,
    /// Where it stands in the order jobs were accepted, when its place in the journal does not say
    /// (a Redis entry that replaced the accepted one: that entry's id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seq: String,
}

/// One record of the file journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// A job accepted, or answered (replaces what was written before for it).
    Job(JobRecord),
    /// The job's first `upto` messages are done.
    Done { job: String, upto: u32 },
    /// Nothing more is owed for the job.
    Finished { job: String },
}

impl Record {
    /// The job the record is about.
    pub fn job(&self) -> &str {
        match self {
            Record::Job(j) => &j.job,
            Record::Done { job, .. } | Record::Finished { job } => job,
        }
    }
}

/// Appends `record` as one frame to `out`.
pub fn frame(record: &Record, out: &mut Vec<u8>) {
    let payload = serde_json::to_vec(record).expect("a record serializes");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// How a journal's bytes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// After a whole frame.
    Clean,
    /// A frame cut short at this offset (the last write of a process that died).
    Torn(usize),
    /// A frame at this offset whose checksum or payload is wrong; what follows is not read.
    Corrupt(usize),
}

/// The records in `bytes`, up to the first frame that is cut short or wrong.
pub fn read(bytes: &[u8]) -> (Vec<Record>, End) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + HEADER) else {
            return (records, End::Torn(at));
        };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return (records, End::Corrupt(at));
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return (records, End::Torn(at));
        };
        if crc32fast::hash(payload) != sum {
            return (records, End::Corrupt(at));
        }
        match serde_json::from_slice(payload) {
            Ok(r) => records.push(r),
            Err(_) => return (records, End::Corrupt(at)),
        }
        at += HEADER + len;
    }
    (records, End::Clean)
}

/// Each job not finished, in the order jobs were first written: its last `Job` record and how many
/// of its messages are done.
fn fold(records: Vec<Record>) -> Vec<(JobRecord, u32)> {
    let mut order: Vec<String> = Vec::new();
    let mut jobs: HashMap<String, (JobRecord, u32)> = HashMap::new();
    for r in records {
        match r {
            Record::Job(j) => {
                if !jobs.contains_key(&j.job) {
                    order.push(j.job.clone());
                }
                // An answer replaces the acceptance; progress counts from the answer's messages.
                jobs.insert(j.job.clone(), (j, 0));
            }
            Record::Done { job, upto } => {
                if let Some(entry) = jobs.get_mut(&job) {
                    entry.1 = entry.1.max(upto);
                }
            }
            Record::Finished { job } => {
                jobs.remove(&job);
            }
        }
    }
    order.dedup();
    (order.into_iter())
        .filter_map(|id| jobs.remove(&id))
        .collect()
}

/// What a journal still owes, one job each, in the order the jobs were first written: the messages
/// not done yet, or an interrupted job's notice (keys `<job>.e<n>`); each with whether it was
/// interrupted.
pub fn pending(records: Vec<Record>) -> Vec<(JobRecord, bool)> {
    (fold(records).into_iter())
        .filter_map(|(j, done)| {
            let interrupted = interrupted(&j);
            owed(j, done).map(|j| (j, interrupted))
        })
        .collect()
}

/// The fewest records that replay to the same state (what compaction keeps): each unfinished job's
/// last `Job` record, and its progress.
pub fn live(records: Vec<Record>) -> Vec<Record> {
    let mut out = Vec::new();
    for (j, upto) in fold(records) {
        let job = j.job.clone();
        out.push(Record::Job(j));
        if upto > 0 {
            out.push(Record::Done { job, upto });
        }
    }
    out
}

/// A job as what it still owes (`None`: nothing).
pub fn owed(mut j: JobRecord, done: u32) -> Option<JobRecord> {
    let messages = match j.messages.take() {
        Some(m) => m.into_iter().skip(done as usize).collect(),
        None => interrupt_messages(&j),
    };
    j.interrupt.clear();
    (!messages.is_empty()).then_some(JobRecord {
        messages: Some(messages),
        ..j
    })
}

/// An interrupted job's notice as messages.
fn interrupt_messages(j: &JobRecord) -> Vec<PendingMessage> {
    (j.interrupt.iter().enumerate())
        .map(|(n, body)| PendingMessage {
            key: format!("{}.e{n}", j.job),
            body: body.clone(),
            deadline_ms: j.deadline_ms,
            attempts: 0,
        })
        .collect()
}

/// Whether the job was interrupted (written when accepted, never answered).
pub fn interrupted(j: &JobRecord) -> bool {
    j.messages.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, messages: Option<&[&str]>) -> Record {
        Record::Job(JobRecord {
            job: id.into(),
            credential: "csml:demo".into(),
            url: "http://127.0.0.1:9/cb".into(),
            request_id: format!("r-{id}"),
            conversation: "c".into(),
            messages: messages.map(|m| {
                (m.iter().enumerate())
                    .map(|(n, b)| PendingMessage {
                        key: format!("{id}.{n}"),
                        body: (*b).into(),
                        deadline_ms: 9,
                        attempts: 0,
                    })
                    .collect()
            }),
            interrupt: vec!["{\"error\":true}".into()],
            deadline_ms: 7,
            seq: String::new(),
        })
    }

    fn framed(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        records.iter().for_each(|r| frame(r, &mut out));
        out
    }

    fn keys(jobs: &[(JobRecord, bool)]) -> Vec<String> {
        (jobs.iter())
            .flat_map(|(j, _)| j.messages.iter().flatten().map(|m| m.key.clone()))
            .collect()
    }

    #[test]
    fn replay_owes_what_is_not_done_in_the_order_jobs_came() {
        let records = [
            job("a", None),
            job("b", None),
            job("a", Some(&["a0", "a1", "a2"])),
            Record::Done {
                job: "a".into(),
                upto: 1,
            },
            job("c", Some(&["c0"])),
            Record::Finished { job: "c".into() },
        ];
        let (read_back, end) = read(&framed(&records));
        assert_eq!(end, End::Clean);
        let owed = pending(read_back);
        // a: its answer's last two messages; b: interrupted, its notice; c: finished.
        assert_eq!(keys(&owed), ["a.1", "a.2", "b.e0"]);
        let notice = &owed[1].0.messages.as_ref().unwrap()[0];
        assert_eq!(
            (notice.body.as_str(), notice.deadline_ms),
            ("{\"error\":true}", 7)
        );
        assert_eq!(owed.iter().map(|o| o.1).collect::<Vec<_>>(), [false, true]);
        assert!(owed.iter().all(|(j, _)| j.interrupt.is_empty()));
    }

    #[test]
    fn compaction_keeps_exactly_what_replays_the_same() {
        let records = vec![
            job("a", None),
            job("b", Some(&["b0"])),
            job("a", Some(&["a0", "a1"])),
            Record::Done {
                job: "a".into(),
                upto: 1,
            },
            Record::Finished { job: "b".into() },
            job("c", None),
        ];
        let kept = live(records.clone());
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!(pending(kept.clone()), pending(records));
        // c is still being answered: it stays accepted, not turned into its notice.
        assert!(matches!(&kept[2], Record::Job(j) if interrupted(j)));
    }

    #[test]
    fn a_torn_or_corrupt_tail_keeps_the_records_before_it() {
        let bytes = framed(&[job("a", Some(&["x"])), job("b", Some(&["y"]))]);
        let first = HEADER + (bytes.len() / 2 - HEADER); // both frames have the same length
        for cut in [first + 1, first + HEADER, bytes.len() - 1] {
            let (r, end) = read(&bytes[..cut]);
            assert_eq!((r.len(), end), (1, End::Torn(first)), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let (r, end) = read(&flipped);
        assert_eq!((r.len(), end), (1, End::Corrupt(first)));
        let mut huge = bytes[..first].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(read(&huge).1, End::Corrupt(first));
    }

    #[test]
    fn a_job_without_a_notice_owes_nothing_once_interrupted() {
        let Record::Job(mut j) = job("a", None) else {
            unreachable!()
        };
        j.interrupt.clear();
        assert_eq!(pending(vec![Record::Job(j)]), []);
    }

    #[test]
    fn spool_lines_of_earlier_versions_still_read() {
        let line = r#"{"credential":"csml:demo","url":"http://x/cb","request_id":"r","conversation":"c","messages":[{"key":"k.0","body":"b","deadline_ms":5,"attempts":2}]}"#;
        let j: JobRecord = serde_json::from_str(line).unwrap();
        assert_eq!(j.messages.unwrap()[0].attempts, 2);
    }
}
