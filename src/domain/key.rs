//! Cache keys: what a caller may use as a key, checked once at the edge.

use std::fmt;

/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 512;

/// A validated key: 1–512 bytes of UTF-8 with no control characters. Anything else goes, and
/// round-trips unchanged through the cache and every store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

/// Why a string is not a usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key at all.
    #[error(
        "the key is empty; put it in the route (…/{{key}}, percent-encoded), in `?key=`, or in the body as {{\"Key\": \"…\"}} (keys `.` and `..` cannot travel in a URL path: send them with `?key=`)"
    )]
    Empty,
    /// More than [`MAX_KEY_BYTES`].
    #[error("the key is {0} bytes long; keys may be at most 512 bytes of UTF-8")]
    TooLong(usize),
    /// Contains a control character.
    #[error("the key contains a control character (U+{0:04X}); keys may not contain control characters")]
    ControlCharacter(u32),
}

impl Key {
    /// Checks `raw` and wraps it.
    pub fn new(raw: impl Into<String>) -> Result<Self, KeyError> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if raw.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(raw.len()));
        }
        if let Some(c) = raw.chars().find(|c| c.is_control()) {
            return Err(KeyError::ControlCharacter(c as u32));
        }
        Ok(Self(raw))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_anything_printable_up_to_512_bytes() {
        for ok in ["a", "with space", "a/b\\c?d#e", "ünïcødé-🙂", &"x".repeat(512), "'\"{}[]%2F"] {
            assert_eq!(Key::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(Key::new(""), Err(KeyError::Empty));
        assert_eq!(Key::new("é".repeat(257)), Err(KeyError::TooLong(514)));
        assert_eq!(Key::new("a\nb"), Err(KeyError::ControlCharacter(10)));
        assert_eq!(Key::new("a\u{7f}"), Err(KeyError::ControlCharacter(0x7f)));
    }
}
