//! The non-HTTP functions (timer, Event Hubs): payload mode only.
//!
//! Each one reads its trigger from the invocation and returns its outputs. Answering a
//! [`TriggerFailure`] makes the envelope non-2xx, which fails the invocation so that the host's
//! retry policy runs; do that only when a retry is wanted (docs/host-protocol.md §4, §5.3).

use serde_json::{Map, Value};

use crate::patterns::write_behind::RunAgain;

/// A failed invocation the host should run again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TriggerFailure {
    /// A write-behind batch that must be applied again.
    #[error(transparent)]
    RunAgain(#[from] RunAgain),
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
}

impl TriggerFunction {
    /// Every non-HTTP function.
    pub(crate) const ALL: [Self; 2] = [Self::EventHubConsumer, Self::RefreshAhead];

    /// The function (folder) name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EventHubConsumer => "EventHubConsumer",
            Self::RefreshAhead => "RefreshAhead",
        }
    }

    /// The name of the trigger binding in `function.json`.
    pub fn trigger_binding(self) -> &'static str {
        match self {
            Self::EventHubConsumer => "events",
            Self::RefreshAhead => "timer",
        }
    }

    /// The non-HTTP function called `name` (case-insensitive), if there is one.
    pub(crate) fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }
}
