//! The process-wide TLS crypto provider.
//!
//! rustls is built without a default provider (so no second, C-built provider joins the tree);
//! every TLS client here (Redis, and reqwest inside the Azure SDKs) uses `ring`, which must be
//! installed before the first client is built, or reqwest panics.

/// Installs `ring` as the process's rustls provider unless one is installed already. Idempotent.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing it is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
