//! The write-behind queue on Azure Event Hubs (cargo feature `eventhubs`, on by default).
//!
//! The `EventHubConsumer` function (an Event Hubs trigger the host runs) drains the hub; this module
//! is the producer side. The host's Event Hubs *output* binding cannot set a partition key, so the
//! handler sends with the Azure SDK (`azure_messaging_eventhubs` 0.15) itself: one AMQP connection per
//! process, authenticated with Microsoft Entra ID (0.15 has no connection-string/SAS support).
//!
//! Each [`WriteEvent`] becomes one Event Hubs event: body = the event's JSON text, content type
//! `application/json`, application properties `op` and `version`, and partition key = the cache key
//! (hashed when longer than Event Hubs allows, see [`partition_key`]), so every write of one key lands
//! in one partition, in order. [`WriteQueue::publish`] returns `Ok` only after the service settled
//! the send as accepted.
//!
//! The parts that need no network — encoding, the partition key, the error mapping and the
//! publish/timeout logic over a [`HubSender`] — are plain code with unit tests. The SDK-backed sender
//! lives in `sdk` below and only builds with the feature (without it, start-up says how to get a
//! build that has it).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

mod settings;

pub use settings::EventHubSettings;

use crate::domain::write_event::{Op, WriteEvent};
use crate::ports::{QueueError, WriteQueue};

/// The content type of every event the handler sends.
pub(crate) const CONTENT_TYPE: &str = "application/json";

/// Event Hubs refuses partition keys longer than this (UTF-16 code units, as the service counts).
pub(crate) const MAX_PARTITION_KEY_LEN: usize = 128;

/// How long one publish may take, connecting included, before it counts as unavailable.
pub(crate) const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the health probe waits for the service.
pub(crate) const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One write event as Event Hubs gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The event body: the [`WriteEvent`] JSON text.
    pub body: String,
    /// The partition key: the cache key, or its stable short form (see [`partition_key`]).
    pub partition_key: String,
    /// Always [`CONTENT_TYPE`].
    pub content_type: &'static str,
    /// Application property `op`: `upsert` or `delete`.
    pub op: &'static str,
    /// Application property `version` (an AMQP long; versions are microseconds, far below `i64::MAX`).
    pub version: i64,
}

/// Encodes a write event for Event Hubs.
pub fn encode(event: &WriteEvent) -> EncodedEvent {
    EncodedEvent {
        body: event.to_json(),
        partition_key: partition_key(&event.key).into_owned(),
        content_type: CONTENT_TYPE,
        op: match event.op {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        },
        version: i64::try_from(event.version).unwrap_or(i64::MAX),
    }
}

/// The partition key of a cache key: the key itself when Event Hubs accepts it (at most
/// [`MAX_PARTITION_KEY_LEN`] UTF-16 code units), otherwise a prefix of the key, `#`, and a 64-bit
/// FNV-1a hash of the whole key in hex. The mapping is a pure function of the key (stable across
/// processes, builds and Rust versions), so one key always goes to one partition; two long keys
/// sharing a short form merely share a partition.
pub fn partition_key(key: &str) -> Cow<'_, str> {
    if key.encode_utf16().count() <= MAX_PARTITION_KEY_LEN {
        return Cow::Borrowed(key);
    }
    let suffix = format!("#{:016x}", fnv1a64(key.as_bytes()));
    let budget = MAX_PARTITION_KEY_LEN - suffix.len();
    let mut prefix = String::new();
    let mut used = 0;
    for c in key.chars() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        prefix.push(c);
    }
    Cow::Owned(prefix + &suffix)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Why a send failed, in the terms that decide what the caller should do. The SDK-backed sender
/// maps SDK errors to these; [`Failure::into_queue_error`] turns them into [`QueueError`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer in time.
    TimedOut(Duration),
    /// The service is throttling or busy.
    Busy(String),
    /// The connection could not be made or broke.
    Connection(String),
    /// The service refused the identity (401/403, `amqp:unauthorized-access`).
    Unauthorized(String),
    /// No Microsoft Entra token could be obtained.
    Credential(String),
    /// The namespace or event hub does not exist (404, `amqp:not-found`).
    NotFound(String),
    /// The event is larger than the hub accepts.
    TooLarge {
        /// The size of the event body in bytes.
        bytes: usize,
    },
    /// The event hub is disabled or send-disabled.
    Disabled(String),
    /// The service refused the request as malformed (a bug, not a transient condition).
    Invalid(String),
    /// Anything else.
    Other(String),
}

impl Failure {
    /// Whether the connection should be dropped and made anew on the next publish.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(self, Failure::TimedOut(_) | Failure::Connection(_) | Failure::Other(_))
    }

    /// The error the write-behind caller sees. `namespace` and `hub` make the messages actionable.
    pub(crate) fn into_queue_error(self, namespace: &str, hub: &str) -> QueueError {
        let unavailable = |message: String, retry_after: Duration| QueueError::Unavailable {
            message,
            retry_after: Some(retry_after),
            cause: None,
        };
        match self {
            Failure::TimedOut(after) => unavailable(
                format!("Event Hubs ({namespace}/{hub}) did not answer within {} s", after.as_secs()),
                Duration::from_secs(1),
            ),
            // The Service Bus/Event Hubs clients back off about 10 s after server-busy.
            Failure::Busy(detail) => unavailable(
                format!("Event Hubs ({namespace}/{hub}) is busy or throttling: {detail}"),
                Duration::from_secs(10),
            ),
            Failure::Connection(detail) => unavailable(
                format!("cannot reach Event Hubs at {namespace} (AMQP over TLS, port 5671): {detail}"),
                Duration::from_secs(1),
            ),
            Failure::Disabled(detail) => unavailable(
                format!("event hub {hub} in {namespace} is disabled or does not accept sends: {detail}"),
                Duration::from_secs(30),
            ),
            Failure::Other(detail) => {
                unavailable(format!("Event Hubs ({namespace}/{hub}) failed: {detail}"), Duration::from_secs(1))
            }
            Failure::Unauthorized(detail) => QueueError::rejected(format!(
                "Event Hubs refused the handler's identity for {namespace}/{hub} ({detail}); assign the Azure \
                 Event Hubs Data Sender role on the event hub or namespace to the app's managed identity (or, \
                 locally, to your Azure CLI login); new role assignments take a few minutes to apply"
            )),
            Failure::Credential(detail) => QueueError::rejected(format!(
                "cannot get a Microsoft Entra token for Event Hubs ({detail}); on Azure, turn on the Function \
                 App's system-assigned managed identity or set EventHubConnection__clientId to a user-assigned \
                 one; locally, sign in with `az login`"
            )),
            Failure::NotFound(detail) => QueueError::rejected(format!(
                "event hub {hub} was not found in namespace {namespace} ({detail}); create it or set EventHubName \
                 and EventHubConnection__fullyQualifiedNamespace to an existing one"
            )),
            Failure::TooLarge { bytes } => QueueError::TooLarge(format!(
                "the write event is {bytes} bytes, more than event hub {hub} accepts in one event (256 KB on the \
                 Basic tier, 1 MB on Standard and above); lower MaxValueBytes or use a higher tier"
            )),
            Failure::Invalid(detail) => {
                QueueError::rejected(format!("Event Hubs ({namespace}/{hub}) refused the event: {detail}"))
            }
        }
    }
}

/// What [`EventHubsQueue`] needs from an Event Hubs client. The SDK-backed implementation is
/// feature-gated; tests use fakes.
#[async_trait]
pub trait HubSender: Send + Sync + 'static {
    /// Sends one event with its partition key; `Ok` once the service accepted it.
    async fn send(&self, event: &EncodedEvent) -> Result<(), Failure>;

    /// A cheap round trip to the service.
    async fn probe(&self) -> Result<(), Failure>;

    /// Called after an operation was abandoned (timed out) or failed with a broken connection:
    /// the next operation should start from a fresh connection.
    fn abandon(&self) {}
}

/// The Event Hubs write-behind queue: encoding and time limits over a [`HubSender`].
pub struct EventHubsQueue {
    sender: Arc<dyn HubSender>,
    namespace: String,
    hub: String,
    publish_timeout: Duration,
    ping_timeout: Duration,
}

impl EventHubsQueue {
    /// A queue over `sender`, for the namespace and hub the settings name.
    pub fn new(sender: Arc<dyn HubSender>, settings: &EventHubSettings) -> Self {
        Self {
            sender,
            namespace: settings.fully_qualified_namespace.clone(),
            hub: settings.event_hub_name.clone(),
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            ping_timeout: DEFAULT_PING_TIMEOUT,
        }
    }

    /// Changes how long a publish and a ping may take.
    pub fn with_timeouts(mut self, publish: Duration, ping: Duration) -> Self {
        self.publish_timeout = publish;
        self.ping_timeout = ping;
        self
    }

    fn fail(&self, failure: Failure) -> QueueError {
        if failure.breaks_connection() {
            self.sender.abandon();
        }
        failure.into_queue_error(&self.namespace, &self.hub)
    }
}

#[async_trait]
impl WriteQueue for EventHubsQueue {
    async fn publish(&self, event: &WriteEvent) -> Result<(), QueueError> {
        let encoded = encode(event);
        match tokio::time::timeout(self.publish_timeout, self.sender.send(&encoded)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(self.fail(failure)),
            Err(_) => Err(self.fail(Failure::TimedOut(self.publish_timeout))),
        }
    }

    async fn ping(&self) -> Result<(), QueueError> {
        match tokio::time::timeout(self.ping_timeout, self.sender.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(self.fail(failure)),
            Err(_) => Err(self.fail(Failure::TimedOut(self.ping_timeout))),
        }
    }

    fn kind(&self) -> &'static str {
        "eventhubs"
    }
}

/// Creates the process's Event Hubs queue from the settings. The AMQP connection is opened in the
/// background (and again whenever it breaks), so a hub that is unreachable at start-up only makes
/// publishes fail with [`QueueError::Unavailable`] until it is back. Errors here are configuration
/// errors the service cannot start with.
#[cfg(feature = "eventhubs")]
pub async fn connect(settings: &EventHubSettings) -> Result<Arc<dyn WriteQueue>, QueueError> {
    let sender = sdk::SdkSender::new(settings, sdk::credential(settings)?, None)?;
    sender.warm_up();
    tracing::info!(
        namespace = %settings.fully_qualified_namespace,
        hub = %settings.event_hub_name,
        identity = %sdk::describe_identity(settings),
        "write-behind queue: Azure Event Hubs"
    );
    Ok(Arc::new(EventHubsQueue::new(sender, settings)))
}

#[cfg(feature = "eventhubs")]
pub mod sdk;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::Key;
    use serde_json::json;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn settings() -> EventHubSettings {
        EventHubSettings {
            fully_qualified_namespace: "myns.servicebus.windows.net".into(),
            client_id: None,
            event_hub_name: "cache-writes".into(),
        }
    }

    /// Records what it sends; answers with a scripted result.
    #[derive(Default)]
    struct FakeSender {
        sent: Mutex<Vec<EncodedEvent>>,
        fail_with: Mutex<Option<Failure>>,
        hang: bool,
        abandoned: AtomicUsize,
    }

    #[async_trait]
    impl HubSender for FakeSender {
        async fn send(&self, event: &EncodedEvent) -> Result<(), Failure> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            if let Some(failure) = self.fail_with.lock().unwrap().clone() {
                return Err(failure);
            }
            self.sent.lock().unwrap().push(event.clone());
            Ok(())
        }

        async fn probe(&self) -> Result<(), Failure> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            self.fail_with.lock().unwrap().clone().map_or(Ok(()), Err)
        }

        fn abandon(&self) {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn queue(sender: &Arc<FakeSender>) -> EventHubsQueue {
        EventHubsQueue::new(sender.clone(), &settings())
            .with_timeouts(Duration::from_millis(200), Duration::from_millis(200))
    }

    #[test]
    fn encodes_body_partition_key_and_properties() {
        let key = Key::new("user:42/profile").unwrap();
        let event = WriteEvent::upsert(
            &key,
            json!({"name": "Ada"}),
            1_730_000_000_000_001,
            crate::domain::time::Timestamp::EPOCH,
        );
        let encoded = encode(&event);
        assert_eq!(encoded.partition_key, "user:42/profile");
        assert_eq!(encoded.content_type, "application/json");
        assert_eq!((encoded.op, encoded.version), ("upsert", 1_730_000_000_000_001));
        assert_eq!(WriteEvent::parse(&encoded.body).unwrap(), event);
        let delete = encode(&WriteEvent::delete(&key, 7, crate::domain::time::Timestamp::EPOCH));
        assert_eq!((delete.op, delete.version), ("delete", 7));
    }

    #[test]
    fn long_keys_get_a_stable_short_partition_key() {
        let short = "k".repeat(MAX_PARTITION_KEY_LEN);
        assert!(matches!(partition_key(&short), Cow::Borrowed(_)));
        let long = format!("{}-a", "k".repeat(300));
        let other = format!("{}-b", "k".repeat(300));
        let pk = partition_key(&long);
        assert_eq!(pk.encode_utf16().count(), MAX_PARTITION_KEY_LEN);
        assert!(pk.starts_with("kkkk"));
        assert_eq!(pk, partition_key(&long.clone()), "same key, same partition key");
        assert_ne!(pk, partition_key(&other), "different keys, different hashes");
        // The hash is FNV-1a 64 of the UTF-8 bytes: pinned so a change cannot move keys silently.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        // Characters outside the BMP count twice (UTF-16), and are never split.
        let wide = "😀".repeat(100);
        let pk = partition_key(&wide);
        assert!(pk.encode_utf16().count() <= MAX_PARTITION_KEY_LEN);
        assert!(pk.ends_with(&format!("#{:016x}", fnv1a64(wide.as_bytes()))));
        assert!(partition_key(&"é".repeat(128)).len() == 256, "128 BMP characters fit as they are");
    }

    #[tokio::test]
    async fn publish_sends_the_encoded_event() {
        let sender = Arc::new(FakeSender::default());
        let q = queue(&sender);
        let key = Key::new("a b").unwrap();
        let event = WriteEvent::upsert(&key, json!([1, 2]), 5, crate::domain::time::Timestamp::EPOCH);
        q.publish(&event).await.unwrap();
        q.publish(&WriteEvent::delete(&key, 6, crate::domain::time::Timestamp::EPOCH)).await.unwrap();
        let sent = sender.sent.lock().unwrap().clone();
        assert_eq!(
            sent,
            vec![encode(&event), encode(&WriteEvent::delete(&key, 6, crate::domain::time::Timestamp::EPOCH))]
        );
        assert!(sent.iter().all(|e| e.partition_key == "a b"));
        assert_eq!(q.kind(), "eventhubs");
        q.ping().await.unwrap();
    }

    #[tokio::test]
    async fn a_hung_send_is_unavailable_and_drops_the_connection() {
        let sender = Arc::new(FakeSender { hang: true, ..Default::default() });
        let q = queue(&sender);
        let event = WriteEvent::delete(&Key::new("k").unwrap(), 1, crate::domain::time::Timestamp::EPOCH);
        let started = std::time::Instant::now();
        let err = q.publish(&event).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, QueueError::Unavailable { retry_after: Some(_), .. }), "{err}");
        assert!(matches!(q.ping().await, Err(QueueError::Unavailable { .. })));
        assert_eq!(sender.abandoned.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_map_to_unavailable_or_rejected() {
        let event = WriteEvent::delete(&Key::new("k").unwrap(), 1, crate::domain::time::Timestamp::EPOCH);
        let cases = [
            (Failure::Busy("server-busy".into()), true, false),
            (Failure::Connection("connection refused".into()), true, true),
            (Failure::Other("?".into()), true, true),
            (Failure::Disabled("entity disabled".into()), true, false),
            (Failure::Unauthorized("401".into()), false, false),
            (Failure::Credential("no identity".into()), false, false),
            (Failure::NotFound("404".into()), false, false),
            (Failure::TooLarge { bytes: 2_000_000 }, false, false),
            (Failure::Invalid("argument-error".into()), false, false),
        ];
        for (failure, retryable, reconnects) in cases {
            let sender = Arc::new(FakeSender::default());
            *sender.fail_with.lock().unwrap() = Some(failure.clone());
            let err = queue(&sender).publish(&event).await.unwrap_err();
            match (&err, retryable) {
                (QueueError::Unavailable { retry_after, .. }, true) => assert!(retry_after.is_some()),
                (QueueError::Rejected { .. }, false) => {}
                (QueueError::TooLarge(_), false) => assert!(matches!(failure, Failure::TooLarge { .. })),
                _ => panic!("{failure:?} gave {err:?}"),
            }
            assert_eq!(sender.abandoned.load(Ordering::SeqCst) == 1, reconnects, "{failure:?}");
            assert!(sender.sent.lock().unwrap().is_empty());
        }
    }

    #[test]
    fn rejections_say_what_to_do() {
        let text = |f: Failure| f.into_queue_error("myns.servicebus.windows.net", "cache-writes").to_string();
        assert!(text(Failure::Unauthorized("x".into())).contains("Azure Event Hubs Data Sender role"));
        assert!(text(Failure::Credential("x".into())).contains("managed identity"));
        assert!(text(Failure::NotFound("x".into())).contains("event hub cache-writes was not found"));
        assert!(text(Failure::TooLarge { bytes: 9 }).contains("MaxValueBytes"));
        assert!(text(Failure::Connection("x".into())).contains("myns.servicebus.windows.net"));
    }
}
