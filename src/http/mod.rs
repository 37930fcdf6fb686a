//! The HTTP face the Functions host talks to.
//!
//! * [`server`] accepts connections (with limits on slow and greedy clients) and routes each path;
//! * [`host`] decodes the host's two wire formats (forwarded HTTP and JSON invocation envelopes)
//!   into one [`host::HttpCall`] and encodes the reply back;
//! * [`functions`] holds one thin handler per function, calling the patterns' services;
//! * [`errors`] maps every service error to its HTTP answer.

mod errors;
pub mod functions;
pub mod host;
pub mod server;

pub use functions::{HttpFunction, TriggerFunction};
pub(crate) use server::misconfigured_router;
pub use server::{Limits, router, serve};

use std::sync::Arc;

use crate::patterns::Services;
use crate::ports::ChangeReader;

/// What the handlers share: the services, the request limits, and how the store's change feed
/// reads. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The patterns' services.
    pub services: Services,
    /// `MaxValueBytes`: the largest value accepted, as serialized JSON.
    pub max_value_bytes: usize,
    /// Reads the documents `StoreChanges` receives (the store's layout is the store adapter's).
    pub changes: Arc<dyn ChangeReader>,
}
