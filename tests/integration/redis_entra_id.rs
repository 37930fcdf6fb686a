//! Entra ID authentication to Redis (`RedisCache__hostName`): a real `redis-server` with an ACL user
//! named like the identity's object id whose password is the access token, and a token credential
//! that issues JWT-shaped tokens. Also token rotation: after the old token is revoked and the
//! connection dropped, the service reconnects with the new token.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration as TokenLifetime, OffsetDateTime};
use base64::Engine;
use cachepatterns::adapters::redis::entra::{REDIS_SCOPE, TokenRefresh};
use cachepatterns::adapters::redis::{Redis, RedisTarget};
use cachepatterns::ports::Cache;
use cachepatterns::ports::cache::Put;
use common::RedisServer;
use serde_json::json;

const OID: &str = "6a1b2c3d-0000-4000-8000-00000000abcd";

/// Issues `token-1`, `token-2`, … as JWTs whose `oid` is [`OID`], each valid for `lifetime`; from
/// the `last`-th on, the same one again.
#[derive(Debug)]
struct FakeCredential {
    issued: AtomicUsize,
    lifetime: TokenLifetime,
    last: usize,
}

impl FakeCredential {
    fn new(lifetime: TokenLifetime) -> Arc<Self> {
        Arc::new(Self { issued: AtomicUsize::new(0), lifetime, last: usize::MAX })
    }
}

fn jwt(n: usize) -> String {
    let part = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.sig{n}",
        part(br#"{"alg":"RS256"}"#),
        part(json!({"oid": OID, "aud": "https://redis.azure.com", "n": n}).to_string().as_bytes())
    )
}

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(&self, scopes: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        assert_eq!(scopes, [REDIS_SCOPE]);
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(AccessToken::new(jwt(n.min(self.last)), OffsetDateTime::now_utc() + self.lifetime))
    }
}

/// Entra ID with the system-assigned identity (the credential is the test's); the test server
/// speaks plain TCP (TLS is covered by the binary tests).
fn target(redis: &RedisServer) -> RedisTarget {
    RedisTarget { entra_id: Some(None), ..RedisTarget::new("127.0.0.1", redis.port, false) }
}

/// A Redis handle authenticating with `credential`'s tokens, refreshed as the handler does.
fn connect(redis: &RedisServer, credential: Arc<FakeCredential>) -> Redis {
    Redis::builder(&target(redis), "").credential(credential).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_the_token_and_the_object_id() {
    let redis = RedisServer::start();
    redis.command(&format!("ACL SETUSER {OID} on >{} ~* &* +@all", jwt(1))).unwrap();
    redis.command("ACL SETUSER default off").unwrap();
    let credential = FakeCredential::new(TokenLifetime::hours(1));
    let cache = connect(&redis, credential.clone());
    cache.ping().await.expect("authenticated with the Entra ID token");
    let whoami = redis.command("ACL LOG").unwrap();
    assert!(!whoami.contains("auth"), "no failed AUTH: {whoami}");
    assert_eq!(credential.issued.load(Ordering::SeqCst), 1, "one token while it is valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_used_after_the_old_one_is_revoked() {
    let redis = RedisServer::start();
    // Tokens that expire at once are refreshed at the floor between refreshes (10 s in service;
    // 50 ms here, so the test need not wait it out); accept the first two.
    redis.command(&format!("ACL SETUSER {OID} on >{} >{} ~* &* +@all", jwt(1), jwt(2))).unwrap();
    redis.command("ACL SETUSER default off").unwrap();
    let credential =
        Arc::new(FakeCredential { issued: AtomicUsize::new(0), lifetime: TokenLifetime::seconds(1), last: 2 });
    let refresh = TokenRefresh { min_period: Duration::from_millis(50), ..TokenRefresh::default() };
    let cache =
        Redis::builder(&target(&redis), "").credential(credential.clone()).token_refresh(refresh).build().unwrap();
    cache.ping().await.expect("first token");
    // Wait for the refresh, then revoke token 1 and drop every connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while credential.issued.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the token was not refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.command(&format!("ACL SETUSER {OID} <{}", jwt(1))).unwrap();
    redis.command("CLIENT KILL TYPE normal").unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if cache.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "reconnected with the rotated token");
}

#[tokio::test]
async fn a_failing_credential_makes_redis_unavailable_not_a_hang() {
    #[derive(Debug)]
    struct Broken;
    #[async_trait::async_trait]
    impl TokenCredential for Broken {
        async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
            Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, "no managed identity here"))
        }
    }
    let redis = RedisServer::start();
    let cache = Redis::builder(&target(&redis), "").credential(Arc::new(Broken)).build().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), cache.ping()).await.expect("no hang");
    assert!(result.is_err());
}

/// Every node connection authenticates with the token: writes and reads of keys spread over the
/// whole key space (every slot of a cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_everywhere_are_written_and_read_with_the_token() {
    let redis = RedisServer::start();
    redis.command(&format!("ACL SETUSER {OID} on >{} ~* &* +@all", jwt(1))).unwrap();
    redis.command("ACL SETUSER default off").unwrap();
    let credential = FakeCredential::new(TokenLifetime::hours(1));
    let cache = connect(&redis, credential.clone());
    let now = common::now();
    let policy = common::settings("localhost", &[]).cache;
    for i in 0..50 {
        let key = format!("entra-{i}");
        let entry = policy.value_entry(serde_json::json!(i), 1 + i as u64, now);
        assert_eq!(cache.put(&key, &entry, now).await.unwrap(), Put::Written, "{key}");
        assert_eq!(cache.get(&key).await.unwrap().unwrap().value, Some(serde_json::json!(i).into()), "{key}");
    }
    assert_eq!(credential.issued.load(Ordering::SeqCst), 1, "one token for every node while it is valid");
}
