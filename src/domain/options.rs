//! What a write may say about how its entry is cached: tags (to invalidate groups of entries at
//! once) and a TTL of its own. Both are kept with the item in the store, so an entry loaded again
//! after it expired carries the same tags and TTL as the one the write cached.

use std::time::Duration;

/// Most tags one entry may carry.
pub const MAX_TAGS: usize = 16;
/// Longest tag, in bytes of UTF-8.
pub const MAX_TAG_BYTES: usize = 128;
/// Longest per-entry TTL: 30 days.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A validated tag: 1–128 bytes of UTF-8 without control characters or commas (a comma separates
/// tags in `?tags=a,b` and `x-cache-tags`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// Why tags or a TTL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// An empty tag (`a,,b`, or an empty list item).
    #[error("a tag is empty; tags are 1–128 bytes, separated by commas")]
    EmptyTag,
    /// A tag over [`MAX_TAG_BYTES`].
    #[error("the tag {0:?} is longer than 128 bytes")]
    TagTooLong(String),
    /// A tag with a control character or a comma.
    #[error("the tag {0:?} contains a control character or a comma; tags may contain neither")]
    TagCharacter(String),
    /// More than [`MAX_TAGS`] tags.
    #[error("{0} tags given; an entry may carry at most 16")]
    TooManyTags(usize),
    /// A TTL that is not a whole number of seconds between 1 and 30 days.
    #[error("the TTL {0:?} is not a whole number of seconds from 1 to 2592000 (30 days)")]
    Ttl(String),
}

impl Tag {
    /// Checks `raw` and wraps it. Surrounding spaces are trimmed.
    pub fn new(raw: &str) -> Result<Self, OptionsError> {
        let tag = raw.trim();
        if tag.is_empty() {
            return Err(OptionsError::EmptyTag);
        }
        if tag.len() > MAX_TAG_BYTES {
            return Err(OptionsError::TagTooLong(tag.chars().take(32).collect()));
        }
        if tag.chars().any(|c| c.is_control() || c == ',') {
            return Err(OptionsError::TagCharacter(tag.to_string()));
        }
        Ok(Self(tag.to_string()))
    }

    /// The tag as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tags from a comma-separated list (`a,b`), deduplicated and sorted. An empty list is no tags.
pub fn parse_tag_list(list: &str) -> Result<Vec<Tag>, OptionsError> {
    if list.trim().is_empty() {
        return Ok(Vec::new());
    }
    tags_from(list.split(','))
}

/// Tags from separate strings, deduplicated and sorted.
pub fn tags_from<'a>(raw: impl IntoIterator<Item = &'a str>) -> Result<Vec<Tag>, OptionsError> {
    let mut tags = raw.into_iter().map(Tag::new).collect::<Result<Vec<_>, _>>()?;
    tags.sort();
    tags.dedup();
    if tags.len() > MAX_TAGS {
        return Err(OptionsError::TooManyTags(tags.len()));
    }
    Ok(tags)
}

/// A TTL in whole seconds, 1 to 30 days.
pub fn parse_ttl_seconds(raw: &str) -> Result<Duration, OptionsError> {
    let seconds: u64 = raw.trim().parse().map_err(|_| OptionsError::Ttl(raw.to_string()))?;
    ttl_from_seconds(seconds).ok_or_else(|| OptionsError::Ttl(raw.to_string()))
}

/// A TTL of `seconds`, if it is within 1 s to 30 days.
pub fn ttl_from_seconds(seconds: u64) -> Option<Duration> {
    let ttl = Duration::from_secs(seconds);
    (seconds >= 1 && ttl <= MAX_TTL).then_some(ttl)
}

/// How a write's entry is cached: its tags and, if it has one, its own TTL (else `CacheTtlSeconds`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryOptions {
    /// Tags, sorted and without duplicates.
    pub tags: Vec<Tag>,
    /// The entry's own logical TTL.
    pub ttl: Option<Duration>,
}

impl EntryOptions {
    /// No tags, the default TTL.
    pub const NONE: EntryOptions = EntryOptions { tags: Vec::new(), ttl: None };

    /// True when the write said nothing about caching.
    pub fn is_default(&self) -> bool {
        self.tags.is_empty() && self.ttl.is_none()
    }

    /// The tags as strings.
    pub fn tag_names(&self) -> Vec<String> {
        self.tags.iter().map(|t| t.as_str().to_string()).collect()
    }

    /// Options read back from a store or a queued event, which were checked when written; what no
    /// longer passes the checks (an item edited by hand) is dropped rather than failing the read.
    pub fn from_stored(tags: &[String], ttl_seconds: Option<u64>) -> Self {
        let mut tags: Vec<Tag> = tags.iter().filter_map(|t| Tag::new(t).ok()).collect();
        tags.sort();
        tags.dedup();
        tags.truncate(MAX_TAGS);
        Self { tags, ttl: ttl_seconds.and_then(ttl_from_seconds) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_are_checked_sorted_and_deduplicated() {
        let tags = parse_tag_list(" b,a , b").unwrap();
        assert_eq!(tags.iter().map(Tag::as_str).collect::<Vec<_>>(), ["a", "b"]);
        assert!(parse_tag_list("").unwrap().is_empty());
        assert_eq!(parse_tag_list("a,,b"), Err(OptionsError::EmptyTag));
        assert!(matches!(parse_tag_list("a\u{1f}b"), Err(OptionsError::TagCharacter(_))));
        assert!(matches!(tags_from(["x,y"]), Err(OptionsError::TagCharacter(_))));
        assert!(matches!(Tag::new(&"t".repeat(129)), Err(OptionsError::TagTooLong(_))));
        let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
        assert_eq!(tags_from(many.iter().map(String::as_str)), Err(OptionsError::TooManyTags(17)));
        assert_eq!(parse_tag_list("ünïcode tag").unwrap()[0].as_str(), "ünïcode tag");
    }

    #[test]
    fn ttls_are_whole_seconds_up_to_thirty_days() {
        assert_eq!(parse_ttl_seconds("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_ttl_seconds("2592000"), Ok(MAX_TTL));
        for bad in ["0", "-1", "1.5", "2592001", "", "x"] {
            assert!(parse_ttl_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stored_options_drop_what_no_longer_passes() {
        let stored = EntryOptions::from_stored(&["b".into(), "".into(), "a".into(), "a".into()], Some(0));
        assert_eq!(stored.tag_names(), ["a", "b"]);
        assert_eq!(stored.ttl, None);
    }
}
