//! Entra ID (managed identity) authentication to Azure Cache for Redis, for `RedisCache__hostName`.
//!
//! Azure Cache for Redis takes an Entra ID access token (scope `https://redis.azure.com/.default`)
//! as the password, with the identity's object id (the token's `oid` claim) as the user name.
//! Tokens expire, so [`EntraIdCredentials`] keeps one fresh in the background (refreshing five
//! minutes before expiry) and hands every new value to the connection, which re-authenticates
//! with `AUTH` without reconnecting; new connections start with the newest token.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::time::OffsetDateTime;
use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use futures_util::Stream;
use redis::auth::{BasicAuth, StreamingCredentialsProvider};
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::watch;

/// The token scope of Azure Cache for Redis.
pub const REDIS_SCOPE: &str = "https://redis.azure.com/.default";

/// When tokens are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRefresh {
    /// How long before its expiry a token is replaced (five minutes).
    pub before_expiry: Duration,
    /// The shortest time between two refreshes, however short-lived the tokens (10 s), so a
    /// credential that issues tokens about to expire cannot make the handler ask it in a loop.
    pub min_period: Duration,
}

impl Default for TokenRefresh {
    fn default() -> Self {
        Self { before_expiry: Duration::from_secs(300), min_period: Duration::from_secs(10) }
    }
}

type Latest = Option<Result<BasicAuth, String>>;

/// A stream of fresh Redis credentials from an Entra ID token credential. Cheap to clone; the
/// background refresh stops when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct EntraIdCredentials {
    latest: watch::Receiver<Latest>,
    _refresher: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl EntraIdCredentials {
    /// Starts keeping a token from `credential` fresh. Must be called inside a Tokio runtime.
    pub fn start(credential: Arc<dyn TokenCredential>, refresh: TokenRefresh) -> Self {
        let (tx, latest) = watch::channel(None);
        let task = tokio::spawn(refresh_forever(credential, refresh, tx));
        Self { latest, _refresher: Arc::new(AbortOnDrop(task)) }
    }
}

async fn refresh_forever(credential: Arc<dyn TokenCredential>, refresh: TokenRefresh, tx: watch::Sender<Latest>) {
    // After a failure: 2 s, doubling up to a minute.
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(2))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times();
    let mut failures = backoff.build();
    loop {
        let fetched = credential.get_token(&[REDIS_SCOPE], None).await;
        let next = match fetched.map_err(|e| e.to_string()).and_then(|token| {
            let secret = token.token.secret().to_string();
            let user = object_id(&secret)?;
            let remaining = (token.expires_on - OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
            Ok((BasicAuth::new(user, secret), remaining))
        }) {
            Ok((auth, remaining)) => {
                tracing::debug!(user = auth.username(), ?remaining, "Entra ID token for Redis refreshed");
                failures = backoff.build();
                tx.send_replace(Some(Ok(auth)));
                remaining.saturating_sub(refresh.before_expiry).max(refresh.min_period)
            }
            Err(message) => {
                tracing::warn!(error = %message, "could not get an Entra ID token for Redis; retrying");
                // Keep a still-valid token; report the error only when there is nothing to use.
                if !matches!(*tx.borrow(), Some(Ok(_))) {
                    tx.send_replace(Some(Err(message)));
                }
                failures.next().unwrap_or(Duration::from_secs(60))
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// The `oid` claim of a JWT access token: the user name Azure Cache for Redis expects.
pub(crate) fn object_id(token: &str) -> Result<String, String> {
    let payload = token.split('.').nth(1).ok_or("the access token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the access token's payload is not base64url: {e}"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the access token's payload is not JSON: {e}"))?;
    claims["oid"].as_str().map(str::to_string).ok_or_else(|| "the access token has no `oid` claim".to_string())
}

fn to_redis(message: String) -> RedisError {
    RedisError::from((ErrorKind::AuthenticationFailed, "Entra ID token unavailable", message))
}

impl StreamingCredentialsProvider for EntraIdCredentials {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let mut rx = self.latest.clone();
        // The current value first (if there is one), then every change.
        rx.mark_changed();
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                let current = rx.borrow_and_update().clone();
                match current {
                    Some(Ok(auth)) => return Some((Ok(auth), rx)),
                    Some(Err(message)) => return Some((Err(to_redis(message)), rx)),
                    None => continue,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        let part = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.sig", part(br#"{"alg":"none"}"#), part(claims.to_string().as_bytes()))
    }

    #[test]
    fn the_user_name_is_the_object_id_claim() {
        assert_eq!(object_id(&jwt(&serde_json::json!({"oid": "1234-abcd", "aud": "x"}))).unwrap(), "1234-abcd");
        assert!(object_id(&jwt(&serde_json::json!({"sub": "x"}))).unwrap_err().contains("oid"));
        assert!(object_id("not-a-jwt").is_err());
    }
}
