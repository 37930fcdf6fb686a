//! The non-HTTP functions (timer, Event Hubs, Cosmos DB change feed): payload mode only.
//!
//! Each one reads its trigger from the invocation and returns its outputs. Answering a
//! [`TriggerFailure`] makes the envelope non-2xx, which fails the invocation so that the host's
//! retry policy runs; do that only when a retry is wanted (docs/host-protocol.md §4, §5.3).

use serde_json::{Map, Value};

use crate::http::host::lenient;
use crate::http::host::payload::Invocation;
use crate::patterns::store_changes::CacheUnreachable;
use crate::patterns::write_behind::RunAgain;

/// A failed invocation the host should run again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TriggerFailure {
    /// A write-behind batch that must be applied again.
    #[error(transparent)]
    RunAgain(#[from] RunAgain),
    /// Store changes whose evictions could not reach Redis.
    #[error(transparent)]
    CacheUnreachable(#[from] CacheUnreachable),
}

/// The retry policy's progress, from `Metadata.RetryContext`: (retry count, max retry count; -1
/// is unbounded). Present whenever the function has a retry policy (docs/host-protocol.md §5.3).
pub(super) fn retry_context(invocation: &Invocation) -> Option<(i64, i64)> {
    let retry = invocation.metadata("RetryContext").and_then(|r| lenient::object(&r))?;
    let number = |name: &str| lenient::field(&retry, name).and_then(lenient::text).and_then(|t| t.parse().ok());
    Some((number("RetryCount")?, number("MaxRetryCount").unwrap_or(-1)))
}

/// What a trigger function returns on success: its output bindings.
pub(crate) type Outputs = Map<String, Value>;

/// The non-HTTP functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerFunction {
    /// `EventHubConsumer`: applies write-behind events from Event Hubs.
    EventHubConsumer,
    /// `RefreshAhead`: timer that refreshes hot keys before they expire.
    RefreshAhead,
    /// `StoreChanges`: the Cosmos DB container's change feed; evicts what other programs changed.
    StoreChanges,
}

impl TriggerFunction {
    /// Every non-HTTP function.
    pub(crate) const ALL: [Self; 3] = [Self::EventHubConsumer, Self::RefreshAhead, Self::StoreChanges];

    /// The function (folder) name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EventHubConsumer => "EventHubConsumer",
            Self::RefreshAhead => "RefreshAhead",
            Self::StoreChanges => "StoreChanges",
        }
    }

    /// The name of the trigger binding in `function.json`.
    pub fn trigger_binding(self) -> &'static str {
        match self {
            Self::EventHubConsumer => "events",
            Self::RefreshAhead => "timer",
            Self::StoreChanges => "documents",
        }
    }

    /// The non-HTTP function called `name` (case-insensitive), if there is one.
    pub(crate) fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }
}
