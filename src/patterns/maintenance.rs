//! Keeping the store tidy: tombstones older than `TombstoneRetentionSeconds` are purged once an
//! hour (every instance does it; it is idempotent). A purged tombstone still refuses writes older
//! than it (the stores keep a watermark), so purging never lets a late write bring a key back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::error_chain::Chain;
use crate::ports::{Clock, Store};

/// How often old tombstones are purged.
pub(crate) const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Purges tombstones older than `retention` every [`PURGE_EVERY`] until `shutdown`.
pub async fn purge_tombstones(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let older_than = clock.now().minus(retention);
        // A purge is idempotent: one cut short by shutdown is done again at the next start.
        let purged = tokio::select! {
            _ = shutdown.cancelled() => return,
            purged = store.purge_tombstones(older_than) => purged,
        };
        match purged {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, older_than = %older_than, "purged old tombstones"),
            Err(e) => tracing::warn!(error = %Chain(&e), "could not purge old tombstones; trying again later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}
