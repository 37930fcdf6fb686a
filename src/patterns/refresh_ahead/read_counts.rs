//! Refresh-ahead reads, counted in this process and sent to the hot-key set in batches.
//!
//! Counting each read in Redis as it happens cost a script run (five commands on the hot-key set's
//! one node) per read. Instead a read adds one to its key here, and the counts are sent every second
//! (`Services::keep_recovering`) and before each timer run reads the hottest keys: one script per
//! key and second, whatever the read rate. Counts are kept per second of reading, so the decay
//! weighs them by when the reads happened (the first read of each second stands for the second),
//! not when they were sent. What a crash loses is at most
//! a second of counts, which only delays a key's turning hot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::domain::time::Timestamp;

/// Most distinct keys waiting to be sent; reads of further keys are not counted until the next
/// send (a key read that often is counted again in the next second).
const MAX_PENDING_KEYS: usize = 100_000;

/// Reads waiting to be sent: per second of reading, per key.
#[derive(Debug, Default)]
pub(crate) struct ReadCounts {
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Per second: when its first read was made, and the reads of each key.
    by_second: BTreeMap<u64, (Timestamp, HashMap<String, u64>)>,
    keys: usize,
}

impl ReadCounts {
    /// Counts one read of `key` at `now`.
    pub(crate) fn count(&self, key: &str, now: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let full = pending.keys >= MAX_PENDING_KEYS;
        let (_, second) = pending.by_second.entry(now.as_millis() / 1000).or_insert_with(|| (now, HashMap::new()));
        if let Some(reads) = second.get_mut(key) {
            *reads += 1;
        } else if !full {
            second.insert(key.to_string(), 1);
            pending.keys += 1;
        }
    }

    /// Takes what is waiting: for each second, when its first read was made and the reads of each
    /// key in it.
    pub(crate) fn take(&self) -> Vec<(Timestamp, Vec<(String, u64)>)> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        pending.by_second.into_values().map(|(first, reads)| (first, reads.into_iter().collect())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_added_up_per_key_and_second() {
        let counts = ReadCounts::default();
        let t = Timestamp::from_millis(10_500);
        counts.count("a", t);
        counts.count("a", Timestamp::from_millis(10_900));
        counts.count("b", t);
        counts.count("a", Timestamp::from_millis(12_000));
        let mut taken = counts.take();
        for (_, reads) in &mut taken {
            reads.sort();
        }
        assert_eq!(
            taken,
            vec![
                (Timestamp::from_millis(10_500), vec![("a".to_string(), 2), ("b".to_string(), 1)]),
                (Timestamp::from_millis(12_000), vec![("a".to_string(), 1)]),
            ]
        );
        assert!(counts.take().is_empty(), "taken once");
    }

    #[test]
    fn the_keys_waiting_are_bounded() {
        let counts = ReadCounts::default();
        let t = Timestamp::from_millis(0);
        for i in 0..MAX_PENDING_KEYS + 10 {
            counts.count(&format!("k{i}"), t);
        }
        counts.count("k0", t);
        let taken = counts.take();
        assert_eq!(taken[0].1.len(), MAX_PENDING_KEYS);
        assert!(taken[0].1.contains(&("k0".to_string(), 2)), "keys already waiting still count");
    }
}
