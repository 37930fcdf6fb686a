//! Where everything lives in Redis.
//!
//! * Cache key `k` is the Redis key `RedisInstanceName + k`, a hash (see `entry`); the per-key
//!   locks are fields of that hash, so every per-key operation touches one key, hence one cluster
//!   slot, whatever `k` holds.
//! * Everything else is internal and starts with `RedisInstanceName + "\x1f"`. U+001F is a control
//!   character, which no valid key may contain, so no key can ever name, read, overwrite or delete
//!   an internal structure.
//! * Internal keys that one script uses together share a hash tag (`{hot}`), so they sit in one
//!   cluster slot.
//!
//! Releases before this layout kept the write-behind and dead-letter streams at
//! `RedisInstanceName + "writebehind"` / `"deadletter"` (names a key could take) and the hot-key
//! set at `RedisInstanceName + "hot\x1frefresh-ahead"`; [`LegacyKeys`] names them so an upgraded
//! instance can move what they hold (see `migrate`).

/// The separator that starts every internal key name.
pub(crate) const INTERNAL: char = '\u{1f}';

/// Key names for one `RedisInstanceName`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `instance_name`.
    pub fn new(instance_name: &str) -> Self {
        Self { prefix: instance_name.to_string() }
    }

    /// `RedisInstanceName`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key holding cache key `key`: exactly `RedisInstanceName + key`.
    pub fn entry(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The cache key a Redis key holds, if it is a cache entry's key.
    #[cfg(test)]
    fn cache_key<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key.strip_prefix(self.prefix.as_str()).filter(|k| !k.is_empty() && !k.starts_with(INTERNAL))
    }

    /// An internal key: `RedisInstanceName + "\x1f" + name`.
    pub fn internal(&self, name: &str) -> String {
        format!("{}{INTERNAL}{name}", self.prefix)
    }

    /// The write-behind stream.
    pub(crate) fn write_behind_stream(&self) -> String {
        self.internal("writebehind")
    }

    /// The dead-letter stream.
    pub(crate) fn dead_letter_stream(&self) -> String {
        self.internal("deadletter")
    }

    /// The hot-key sorted set of refresh-ahead (same slot as [`Keys::hot_landmark`]).
    pub(crate) fn hot_set(&self) -> String {
        self.internal("{hot}set")
    }

    /// The decay landmark of the hot-key set.
    pub(crate) fn hot_landmark(&self) -> String {
        self.internal("{hot}landmark")
    }

    /// The refresh-ahead timer's lock for the tick at `tick_ms`.
    pub(crate) fn tick_lock(&self, tick_ms: u64) -> String {
        self.internal(&format!("refresh-ahead{INTERNAL}tick{INTERNAL}{tick_ms}"))
    }

    /// The invalidation clocks of tags and "all" (docs/invalidation.md).
    pub(crate) fn clocks(&self) -> String {
        self.internal("{inv}clocks")
    }

    /// The pub/sub channel of the invalidation feed.
    pub(crate) fn feed_channel(&self) -> String {
        self.internal("invalidate")
    }

    /// The lease on version node id `node`.
    pub(crate) fn node_lease(&self, node: u64) -> String {
        self.internal(&format!("node{INTERNAL}{node}"))
    }

    /// The names an older release used.
    pub fn legacy(&self) -> LegacyKeys {
        LegacyKeys {
            write_behind_stream: format!("{}writebehind", self.prefix),
            dead_letter_stream: format!("{}deadletter", self.prefix),
            hot_set: format!("{}hot{INTERNAL}refresh-ahead", self.prefix),
            hot_landmark: format!("{}hot{INTERNAL}landmark", self.prefix),
        }
    }
}

/// The Redis Cluster slot of `redis_key` (CRC16/XMODEM of the key, or of its hash tag: the text
/// between the first `{` and the next `}`, when not empty), as the cluster computes it. Callers
/// group keys by slot to send them in one multi-key call.
pub(crate) fn slot(redis_key: &str) -> u16 {
    let bytes = redis_key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let close = open + 1 + bytes[open + 1..].iter().position(|b| *b == b'}')?;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Internal keys of the layout before this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyKeys {
    /// The write-behind stream (a key could be named like it).
    pub write_behind_stream: String,
    /// The dead-letter stream (a key could be named like it).
    pub dead_letter_stream: String,
    /// The hot-key set.
    pub hot_set: String,
    /// Its landmark.
    pub hot_landmark: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::Key;

    #[test]
    fn no_valid_key_reaches_an_internal_name() {
        let keys = Keys::new("app:");
        let internal = [
            keys.write_behind_stream(),
            keys.dead_letter_stream(),
            keys.hot_set(),
            keys.hot_landmark(),
            keys.tick_lock(5),
            keys.node_lease(7),
            keys.clocks(),
            keys.feed_channel(),
        ];
        for name in &internal {
            let as_key = name.strip_prefix("app:").unwrap();
            assert!(Key::new(as_key).is_err(), "{name:?} is reachable from a key");
            assert_eq!(keys.cache_key(name), None);
        }
        for user in ["writebehind", "deadletter", "lock", "hot", "{hot}set", "node"] {
            let entry = keys.entry(user);
            assert!(!internal.contains(&entry));
            assert_eq!(keys.cache_key(&entry), Some(user));
        }
    }

    #[test]
    fn slots_are_the_clusters() {
        // The check value of CRC16/XMODEM, and slots `CLUSTER KEYSLOT` answers.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!((slot("foo"), slot("bar"), slot("hello")), (12182, 5061, 866));
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("a{user1000}b"), slot("user1000"));
        // An empty tag, or none closed, hashes the whole key.
        assert_eq!(slot("{}user"), crc16_xmodem(b"{}user") % 16384);
        assert_eq!(slot("{user"), crc16_xmodem(b"{user") % 16384);
        assert_eq!(slot("x{}{a}"), crc16_xmodem(b"x{}{a}") % 16384);
    }

    #[test]
    fn grouped_keys_share_a_hash_tag() {
        let tag = |k: &str| {
            let open = k.find('{')?;
            let close = k[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| k[open + 1..close].to_string())
        };
        for prefix in ["", "app:", "a{b}c:", "odd{"] {
            let keys = Keys::new(prefix);
            assert_eq!(tag(&keys.hot_set()), tag(&keys.hot_landmark()), "prefix {prefix:?}");
            assert!(tag(&keys.hot_set()).is_some());
        }
    }
}
