//! Cache keys → Cosmos DB item ids.
//!
//! Cosmos ids are at most 255 characters and must not contain `/ \ ? #`; ids that travel in URL
//! paths are also safest without spaces, `%`, non-ASCII or dot segments (`.`/`..`). Keys allow all
//! of that (1–512 bytes of UTF-8), so each key maps to exactly one id, in one of three forms that
//! can never collide with each other:
//!
//! | form | when | id |
//! | --- | --- | --- |
//! | plain | ≤ 200 bytes of `A–Z a–z 0–9 - _ . : @`, not starting with `.` | the key itself |
//! | encoded | any other key of ≤ 180 bytes | `~` + base64url (no padding) of the key |
//! | hashed | keys over 180 bytes | `~~` + base64url of the key's SHA-256 |
//!
//! Plain ids never start with `~`, and base64url never contains `~`, so the three forms are
//! disjoint. The store's own items (the ping target, the health probe, the tombstone watermark) use
//! ids of the form `~~name` that are never [`HASHED_ID_LEN`] characters long, so no key maps to
//! them either ([`is_reserved`]). Plain and encoded ids decode back to the key by themselves; a hashed id does not, which
//! is why every document also records the original key in its `key` field and the store returns
//! that field (and checks it, so a hash collision would surface as an error, never as another key's
//! value).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Longest key kept as its own id.
const MAX_PLAIN_BYTES: usize = 200;
/// Longest key base64-encoded into the id (180 bytes → 240 characters + the prefix).
const MAX_ENCODED_BYTES: usize = 180;
const ENCODED_PREFIX: &str = "~";
const HASHED_PREFIX: &str = "~~";
/// Length of every hashed id: the prefix and 43 characters of base64url (32 bytes).
pub(crate) const HASHED_ID_LEN: usize = 45;

/// The Cosmos item id (and partition key value) for `key`.
pub fn item_id(key: &str) -> String {
    if is_plain(key) {
        key.to_string()
    } else if key.len() <= MAX_ENCODED_BYTES {
        format!("{ENCODED_PREFIX}{}", URL_SAFE_NO_PAD.encode(key))
    } else {
        format!("{HASHED_PREFIX}{}", URL_SAFE_NO_PAD.encode(Sha256::digest(key.as_bytes())))
    }
}

/// The key an id stands for, when the id alone says it (plain and encoded ids); `None` for hashed
/// ids, whose key is only in the document.
pub(crate) fn key_of(id: &str) -> Option<String> {
    if id.starts_with(HASHED_PREFIX) {
        None
    } else if let Some(encoded) = id.strip_prefix(ENCODED_PREFIX) {
        URL_SAFE_NO_PAD.decode(encoded).ok().and_then(|bytes| String::from_utf8(bytes).ok())
    } else {
        Some(id.to_string())
    }
}

/// True for the ids of the store's own items: `~~` followed by anything but a hashed id's 43
/// characters. No key maps to such an id.
pub(crate) fn is_reserved(id: &str) -> bool {
    id.starts_with(HASHED_PREFIX) && id.len() != HASHED_ID_LEN
}

fn is_plain(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_PLAIN_BYTES
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosmos_accepts(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 255
            && id.is_ascii()
            && !id.contains(['/', '\\', '?', '#', '%', ' '])
            && id != "."
            && id != ".."
    }

    #[test]
    fn safe_keys_are_their_own_id() {
        for key in ["plain", "user:42", "a-b_c.d@e", &"k".repeat(200)] {
            assert_eq!(item_id(key), key);
            assert_eq!(key_of(key).as_deref(), Some(key));
        }
    }

    #[test]
    fn unsafe_keys_are_encoded_and_reversible() {
        let keys = [
            "with/slash",
            "back\\slash",
            "question?mark",
            "hash#tag",
            "percent%2F",
            "spaces and ünïcødé 🙂",
            ".",
            "..",
            ".hidden",
            "~tilde",
            "~~double",
            " ",
        ];
        for key in keys {
            let id = item_id(key);
            assert!(id.starts_with('~') && !id.starts_with("~~"), "{key:?} → {id}");
            assert!(cosmos_accepts(&id), "{key:?} → {id}");
            assert_eq!(key_of(&id).as_deref(), Some(key));
        }
        let at_limit = "é".repeat(90); // 180 bytes
        assert_eq!(key_of(&item_id(&at_limit)), Some(at_limit.clone()));
        assert!(item_id(&at_limit).len() <= 255);
    }

    #[test]
    fn long_keys_are_hashed() {
        for key in ["é".repeat(200), "k".repeat(201), "k".repeat(512), format!("/{}", "x".repeat(180))] {
            let id = item_id(&key);
            assert!(id.starts_with("~~"), "{id}");
            assert_eq!(id.len(), HASHED_ID_LEN, "{id}");
            assert!(!is_reserved(&id), "{id}");
            assert!(cosmos_accepts(&id), "{id}");
            assert_eq!(key_of(&id), None);
        }
        assert_ne!(item_id(&"k".repeat(511)), item_id(&"k".repeat(512)));
    }

    #[test]
    fn forms_never_collide() {
        // A key that looks like an encoded or hashed id is itself encoded, so it gets another id.
        for key in ["with/slash", &"k".repeat(300)] {
            let id = item_id(key);
            assert_ne!(item_id(&id), id, "the id {id:?} taken as a key must map elsewhere");
        }
        // Keys differing only in case stay apart in every form.
        assert_ne!(item_id("Key"), item_id("key"));
        assert_ne!(item_id("a/B"), item_id("a/b"));
    }

    #[test]
    fn reserved_ids_are_reached_by_no_key() {
        for reserved in ["~~ping", "~~health", "~~tombstone-watermark"] {
            assert!(is_reserved(reserved));
            assert!(cosmos_accepts(reserved));
            // The id taken as a key, and any key at all, maps to a non-reserved id.
            assert!(!is_reserved(&item_id(reserved)), "{reserved}");
            assert_eq!(key_of(reserved), None);
        }
        for key in ["plain", "~~health", "with/slash", &"k".repeat(512), &"é".repeat(100)] {
            assert!(!is_reserved(&item_id(key)), "{key:?}");
        }
    }
}
