//! The dead-letters port: writes that could not be applied, kept with the reason, never dropped,
//! until someone replays or discards them (the `DeadLetters` function). They live in Redis next to
//! the cache, so failures are [`CacheError`]s.

use async_trait::async_trait;

use super::CacheError;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Its id (use it to replay or discard it).
    pub id: DeadLetterId,
    /// The original message text, exactly as received.
    pub event: String,
    /// Why it could not be applied.
    pub reason: String,
    /// Where it came from (a stream entry, an Event Hubs partition and sequence number).
    pub source: String,
    /// How many attempts were made.
    pub attempts: u64,
    /// When it was dead-lettered (RFC 3339).
    #[serde(rename = "failedAt")]
    pub failed_at: String,
}

/// A write that could not be applied, to be recorded.
#[derive(Debug, Clone, Copy)]
pub struct Failed<'a> {
    /// The original message text.
    pub event: &'a str,
    /// Why it could not be applied.
    pub reason: &'a str,
    /// Where it came from.
    pub source: &'a str,
    /// How many attempts were made.
    pub attempts: u64,
}

/// A dead letter's id: `<ms>-<seq>`, as Redis writes stream entry ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DeadLetterId(String);

impl DeadLetterId {
    /// Checks a caller's id. Anything that is not `<ms>-<seq>` is refused before it reaches Redis,
    /// so a mistyped id is a clear `400`, not a Redis error that looks like an outage.
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.trim().split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        (digits(ms) && digits(seq) && ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
            .then(|| Self(format!("{ms}-{seq}")))
    }

    /// An id the dead-letter store issued.
    pub(crate) fn issued(id: String) -> Self {
        Self(id)
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where dead letters are kept.
#[async_trait]
pub trait DeadLetters: Send + Sync + std::fmt::Debug + 'static {
    /// Records a write that could not be applied. An error means it was NOT recorded: the caller
    /// must then keep the message (not settle it) or fail the invocation.
    async fn record(&self, failed: Failed<'_>) -> Result<DeadLetterId, CacheError>;

    /// Up to `count` dead letters, oldest first, after `after` if given.
    async fn list(&self, count: usize, after: Option<&DeadLetterId>) -> Result<Vec<DeadLetter>, CacheError>;

    /// The dead letter `id`, if it exists.
    async fn get(&self, id: &DeadLetterId) -> Result<Option<DeadLetter>, CacheError>;

    /// Removes a dead letter (after a replay, or to discard it). `Ok(false)` if it was not there.
    async fn remove(&self, id: &DeadLetterId) -> Result<bool, CacheError>;

    /// How many dead letters there are.
    async fn count(&self) -> Result<u64, CacheError>;
}

#[cfg(test)]
mod tests {
    use super::DeadLetterId;

    #[test]
    fn only_stream_ids_are_ids() {
        assert_eq!(DeadLetterId::parse("1700000000000-0").as_ref().map(DeadLetterId::as_str), Some("1700000000000-0"));
        assert_eq!(DeadLetterId::parse(" 1-2 ").as_ref().map(DeadLetterId::as_str), Some("1-2"));
        for bad in ["abc", "1", "1-", "-1", "1-2-3", "1-x", "\u{ff}", "99999999999999999999999-0", "+1-0", "1 -0"] {
            assert_eq!(DeadLetterId::parse(bad), None, "{bad:?}");
        }
    }
}
