//! A delivery journal's bytes as a crash may leave them: read, replayed, compacted. Whatever the
//! bytes, reading stops at a damaged frame without panicking, every frame read is whole, and the
//! compacted records replay to what the originals do.
#![no_main]

use botbridge::delivery::journal_records::{frame, live, pending, read, End};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (records, end) = read(data);
    // What was read frames back to the same records.
    let mut again = Vec::new();
    records.iter().for_each(|r| frame(r, &mut again));
    let stop = match end {
        End::Clean => data.len(),
        End::Torn(at) | End::Corrupt(at) => at,
    };
    assert!(stop <= data.len());
    if end != End::Clean {
        assert!(stop < data.len(), "a damaged end lies inside the bytes");
    }
    assert_eq!(read(&again), (records.clone(), End::Clean), "records frame back to themselves");
    // Compaction keeps exactly what replays the same.
    let kept = live(records.clone());
    assert_eq!(pending(kept.clone()), pending(records.clone()));
    assert!(kept.len() <= records.len());
    let mut compacted = Vec::new();
    kept.iter().for_each(|r| frame(r, &mut compacted));
    let (back, end) = read(&compacted);
    assert_eq!((back, end), (kept, End::Clean));
    // Every owed message has a key.
    for (job, _) in pending(records) {
        assert!(job.messages.iter().flatten().all(|m| !m.key.is_empty() || job.job.is_empty()));
    }
});
