//! The domain: plain values and rules with no I/O. Keys, time, versions, cache entries and write
//! events mean the same thing to every layer above.

pub mod entry;
pub mod error_chain;
pub mod json;
pub mod key;
pub mod options;
pub mod time;
pub mod version;
pub mod write_event;
