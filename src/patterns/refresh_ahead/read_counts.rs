//! Refresh-ahead reads, counted in this process and sent to the hot-key set in batches.
//!
//! Counting each read in Redis as it happens cost a script run (five commands on the hot-key set's
//! one node) per read. Instead a read adds one to its key here, and the counts are sent every second
//! (`Services::keep_recovering`) and before each timer run reads the hottest keys: per second of
//! reading, one script call per few hundred keys, one call at a time, whatever the read rate
//! (`adapters::redis::hot_keys`). Counts are kept per second of reading, so the decay
//! weighs them by when the reads happened (the first read of each second stands for the second),
//! not when they were sent. What a crash loses is at most
//! a second of counts, which only delays a key's turning hot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::domain::time::Timestamp;

/// Reads waiting to be sent: per second of reading, per key.
#[derive(Debug)]
pub(crate) struct ReadCounts {
    pending: Mutex<Pending>,
    /// Most counts (one per key and second of reading) waiting to be sent: as many as the hot-key set keeps
    /// (`RefreshAheadHotKeysMax`); more would only be trimmed away again, and each costs a share of
    /// the send. Reads of further keys are not counted until the next send (a key read that often
    /// is counted again in the next second).
    max_keys: usize,
}

#[derive(Debug, Default)]
struct Pending {
    /// Per second: when its first read was made, and the reads of each key.
    by_second: BTreeMap<u64, (Timestamp, HashMap<String, u64>)>,
    keys: usize,
}

impl ReadCounts {
    /// Nothing waiting; at most `max_keys` counts (key and second) will.
    pub(crate) fn new(max_keys: u64) -> Self {
        Self { pending: Mutex::default(), max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX) }
    }

    /// Counts one read of `key` at `now`.
    pub(crate) fn count(&self, key: &str, now: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let full = pending.keys >= self.max_keys;
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
        let counts = ReadCounts::new(10);
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
    fn the_keys_waiting_are_bounded_by_the_hot_key_sets_size_across_seconds() {
        const MAX: u64 = 100;
        let counts = ReadCounts::new(MAX);
        for i in 0..MAX + 10 {
            counts.count(&format!("k{i}"), Timestamp::from_millis(0));
        }
        counts.count("k0", Timestamp::from_millis(0));
        counts.count("k0", Timestamp::from_millis(1000));
        let taken = counts.take();
        assert_eq!(taken[0].1.len(), MAX as usize);
        assert!(taken[0].1.contains(&("k0".to_string(), 2)), "keys already waiting still count");
        assert!(taken[1].1.is_empty(), "the bound holds across seconds: {:?}", taken[1]);
        counts.count("k0", Timestamp::from_millis(2000));
        assert_eq!(counts.take()[0].1, vec![("k0".to_string(), 1)], "a send makes room again");
    }
}
