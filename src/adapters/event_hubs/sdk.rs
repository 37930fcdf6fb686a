//! The [`HubSender`] over `azure_messaging_eventhubs` 0.15 (feature `eventhubs`).
//!
//! One `ProducerClient` (one AMQP connection) serves the process. It is opened in the background at
//! start-up and again, at most once a second, after a publish found it broken or timed out; while it
//! cannot be opened, publishes fail fast with the last connection error. Each publish sends a
//! one-event batch whose partition key is the event's: the SDK puts the key in the
//! `x-opt-partition-key` annotation, and the batch API also checks the event against the link's
//! maximum message size before anything is sent.
//!
//! All SDK work runs on a dedicated single-threaded Tokio runtime (thread `eventhubs-amqp`), not on
//! the handler's multi-threaded one. fe2o3-amqp 0.14.1 records a sent delivery as unsettled only
//! *after* handing its transfer to the session engine; on a multi-threaded runtime the engine can
//! process the service's `accepted` disposition in between, drop it, and leave the send waiting
//! forever (`tests/integration/eventhubs_amqp.rs` reproduces this). On one thread the two steps cannot
//! interleave. Sends on one link are serialized by the SDK anyway, so one thread costs nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind as CoreErrorKind;
use azure_core_amqp::{AmqpDescribedError, AmqpError, AmqpErrorCondition, AmqpErrorKind};
use azure_messaging_eventhubs::error::ErrorKind as HubErrorKind;
use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, EventHubsError, ProducerClient, RetryOptions};

use super::EventHubSettings;
use super::{CONTENT_TYPE, EncodedEvent, Failure, HubSender};
use crate::adapters::identity::Identity;
use crate::ports::QueueError;

/// How long opening the AMQP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// After a failed connection attempt, publishes fail fast with its error for this long.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// The identity the settings and environment select, for the start-up log line.
pub(crate) fn describe_identity(settings: &EventHubSettings) -> String {
    Identity::for_client_id(settings.client_id.as_deref()).describe()
}

/// The token credential for the settings (no network: tokens are fetched on first use).
pub fn credential(settings: &EventHubSettings) -> Result<Arc<dyn TokenCredential>, QueueError> {
    let identity = Identity::for_client_id(settings.client_id.as_deref());
    identity.credential().map_err(|e| QueueError::Rejected {
        message: format!("cannot set up the Event Hubs identity ({})", identity.describe()),
        cause: Some(Arc::new(e)),
    })
}

/// The SDK-backed sender.
pub struct SdkSender {
    namespace: String,
    hub: String,
    credential: Arc<dyn TokenCredential>,
    custom_endpoint: Option<String>,
    amqp: AmqpThread,
    current: Mutex<Option<Arc<ProducerClient>>>,
    connecting: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<(Instant, Failure)>>,
}

impl SdkSender {
    /// A sender for the settings' hub. `custom_endpoint` (e.g. `amqp://127.0.0.1:5672`) sends the
    /// AMQP connection somewhere other than the namespace (a proxy, or a local test endpoint).
    pub fn new(
        settings: &EventHubSettings,
        credential: Arc<dyn TokenCredential>,
        custom_endpoint: Option<String>,
    ) -> Result<Arc<Self>, QueueError> {
        Ok(Arc::new(Self {
            namespace: settings.fully_qualified_namespace.clone(),
            hub: settings.event_hub_name.clone(),
            credential,
            custom_endpoint,
            amqp: AmqpThread::start()?,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
        }))
    }

    /// Opens the connection in the background so the first publish does not pay for it.
    pub(crate) fn warm_up(self: &Arc<Self>) {
        let sender = self.clone();
        tokio::spawn(async move {
            if let Err(failure) = sender.client().await {
                let error = failure.into_queue_error(&sender.namespace, &sender.hub);
                tracing::warn!(%error, "Event Hubs is not reachable yet; write-behind publishes fail until it is");
            }
        });
    }

    async fn client(&self) -> Result<Arc<ProducerClient>, Failure> {
        if let Some(client) = lock(&self.current).clone() {
            return Ok(client);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(client) = lock(&self.current).clone() {
            return Ok(client);
        }
        if let Some((at, failure)) = lock(&self.last_failure).clone()
            && at.elapsed() < RECONNECT_BACKOFF
        {
            return Err(failure);
        }
        let open =
            open(self.namespace.clone(), self.hub.clone(), self.credential.clone(), self.custom_endpoint.clone());
        let opened = match tokio::time::timeout(CONNECT_TIMEOUT, self.amqp.run(open)).await {
            Ok(Ok(Ok(client))) => Ok(Arc::new(client)),
            Ok(Ok(Err(e))) => Err(failure_of(&e)),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::TimedOut(CONNECT_TIMEOUT)),
        };
        match opened {
            Ok(client) => {
                *lock(&self.current) = Some(client.clone());
                *lock(&self.last_failure) = None;
                tracing::debug!(namespace = %self.namespace, hub = %self.hub, "Event Hubs connection open");
                Ok(client)
            }
            Err(failure) => {
                *lock(&self.last_failure) = Some((Instant::now(), failure.clone()));
                Err(failure)
            }
        }
    }
}

/// A thread running a current-thread Tokio runtime for the SDK (see the module docs). It stops when
/// the sender is dropped.
struct AmqpThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl AmqpThread {
    fn start() -> Result<Self, QueueError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::channel();
        let cannot =
            |e: &dyn std::fmt::Display| QueueError::rejected(format!("cannot start the Event Hubs thread: {e}"));
        std::thread::Builder::new()
            .name("eventhubs-amqp".to_string())
            .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    let _ = runtime.block_on(stopped);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| cannot(&e))?;
        let handle = handle.recv().map_err(|e| cannot(&e))?.map_err(|e| cannot(&e))?;
        Ok(Self { handle, _stop: stop })
    }

    /// Runs `work` on the SDK's thread. If the caller stops waiting (a timeout), the work still runs
    /// to its end there: the SDK is never cancelled halfway through a send.
    async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, Failure> {
        self.handle.spawn(work).await.map_err(|e| Failure::Other(format!("the Event Hubs task ended: {e}")))
    }
}

async fn open(
    namespace: String,
    hub: String,
    credential: Arc<dyn TokenCredential>,
    custom_endpoint: Option<String>,
) -> Result<ProducerClient, EventHubsError> {
    // Keep the SDK's own retries well inside the publish timeout: a caller waiting for a 202
    // is better served by a quick 503 it can retry than by a minute of silence.
    let retry = RetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(200),
        max_delay: azure_core::time::Duration::seconds(2),
        max_retries: 3,
        max_total_elapsed: azure_core::time::Duration::seconds(6),
    };
    // The SDK uses the application ID as the AMQP container ID (and in the user agent), so it must
    // differ between processes: without it the SDK would pick a bare UUID.
    let application_id = format!("redis-cache-patterns-{}", azure_core::Uuid::new_v4());
    let mut builder = ProducerClient::builder().with_application_id(application_id).with_retry_options(retry);
    if let Some(endpoint) = custom_endpoint {
        builder = builder.with_custom_endpoint(endpoint);
    }
    builder.open(&namespace, &hub, credential).await
}

/// Sends one event as a one-event batch with its partition key. `Ok(false)`: it does not fit.
async fn send_one(client: &ProducerClient, event: &EncodedEvent) -> Result<bool, EventHubsError> {
    let batch = client
        .create_batch(Some(EventDataBatchOptions {
            partition_key: Some(event.partition_key.clone()),
            ..Default::default()
        }))
        .await?;
    let data = EventData::builder()
        .with_body(event.body.as_bytes())
        .with_content_type(CONTENT_TYPE.to_string())
        .add_property("op".to_string(), event.op)
        .add_property("version".to_string(), event.version)
        .build();
    if !batch.try_add_event_data(data, None)? {
        return Ok(false);
    }
    client.send_batch(batch, None).await?;
    Ok(true)
}

#[async_trait]
impl HubSender for SdkSender {
    async fn send(&self, event: &EncodedEvent) -> Result<(), Failure> {
        let client = self.client().await?;
        let owned = event.clone();
        match self.amqp.run(async move { send_one(&client, &owned).await }).await? {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::TooLarge { bytes: event.body.len() }),
            Err(e) => Err(match failure_of(&e) {
                Failure::TooLarge { .. } => Failure::TooLarge { bytes: event.body.len() },
                other => other,
            }),
        }
    }

    async fn probe(&self) -> Result<(), Failure> {
        let client = self.client().await?;
        let probe = async move {
            match client.get_eventhub_properties().await {
                Ok(_) => Ok(()),
                // Reading the hub's properties may need more than the Data Sender role; attaching the
                // send link (what publishes need) proves the service answers and accepts the identity.
                Err(e) => match failure_of(&e) {
                    Failure::Unauthorized(_) => client.create_batch(None).await.map(drop).map_err(|e| failure_of(&e)),
                    other => Err(other),
                },
            }
        };
        self.amqp.run(probe).await?
    }

    fn abandon(&self) {
        if lock(&self.current).take().is_some() {
            tracing::debug!(namespace = %self.namespace, "dropping the Event Hubs connection; the next publish reconnects");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Classifies an SDK error. The SDK nests errors (an AMQP error inside an `azure_core::Error`
/// inside an `EventHubsError`, and back); this follows the nesting to the most specific cause.
pub(crate) fn failure_of(error: &EventHubsError) -> Failure {
    match &error.kind {
        HubErrorKind::AmqpError(e) => from_amqp(e),
        HubErrorKind::AzureCore(e) => from_core(e),
        HubErrorKind::SendRejected(Some(described)) => from_described(described),
        _ => Failure::Other(error.to_string()),
    }
}

fn from_core(error: &azure_core::Error) -> Failure {
    if let Some(inner) = error.get_ref() {
        if let Some(e) = inner.downcast_ref::<AmqpError>() {
            return from_amqp(e);
        }
        if let Some(e) = inner.downcast_ref::<EventHubsError>() {
            return failure_of(e);
        }
        if let Some(e) = inner.downcast_ref::<azure_core::Error>() {
            return from_core(e);
        }
    }
    let text = error.to_string();
    match error.kind() {
        CoreErrorKind::Credential => Failure::Credential(text),
        CoreErrorKind::Io | CoreErrorKind::Connection => Failure::Connection(text),
        CoreErrorKind::HttpResponse { status, .. } => from_status(u16::from(*status), text),
        _ => Failure::Other(text),
    }
}

fn from_amqp(error: &AmqpError) -> Failure {
    let text = error.to_string();
    match error.kind() {
        AmqpErrorKind::AzureCore(e) => from_core(e),
        AmqpErrorKind::AmqpDescribedError(described) => from_described(described),
        AmqpErrorKind::ManagementStatusCode(status, description) => {
            from_status(u16::from(*status), description.clone().unwrap_or(text))
        }
        AmqpErrorKind::ConnectionClosedByRemote(_)
        | AmqpErrorKind::ConnectionDetachedByRemote(_)
        | AmqpErrorKind::SessionClosedByRemote(_)
        | AmqpErrorKind::SessionDetachedByRemote(_)
        | AmqpErrorKind::LinkClosedByRemote(_)
        | AmqpErrorKind::LinkDetachedByRemote(_)
        | AmqpErrorKind::LinkStateError(_)
        | AmqpErrorKind::DetachError(_)
        | AmqpErrorKind::ConnectionDropped(_)
        | AmqpErrorKind::IdleTimeoutElapsed(_)
        | AmqpErrorKind::FramingError(_)
        | AmqpErrorKind::TransportImplementationError(_) => Failure::Connection(text),
        _ => Failure::Other(text),
    }
}

fn from_described(error: &AmqpDescribedError) -> Failure {
    use AmqpErrorCondition as C;
    let condition: &str = (&error.condition).into();
    let text = match &error.description {
        Some(description) => format!("{condition}: {description}"),
        None => condition.to_string(),
    };
    match error.condition {
        C::ServerBusyError | C::ResourceLimitExceeded => Failure::Busy(text),
        C::UnauthorizedAccess => Failure::Unauthorized(text),
        C::NotFound | C::ResourceDeleted => Failure::NotFound(text),
        C::LinkPayloadSizeExceeded => Failure::TooLarge { bytes: 0 },
        C::EntityDisabledError => Failure::Disabled(text),
        C::ArgumentError
        | C::ArgumentOutOfRangeError
        | C::InvalidField
        | C::DecodeError
        | C::NotAllowed
        | C::NotImplemented
        | C::PreconditionFailed => Failure::Invalid(text),
        C::TimeoutError
        | C::InternalError
        | C::OperationCancelled
        | C::ConnectionForced
        | C::ConnectionFramingError
        | C::ConnectionRedirect
        | C::LinkDetachForced
        | C::LinkRedirect
        | C::LinkStolen
        | C::ProtonIo
        | C::IllegalState
        | C::EntityUpdated
        | C::PartitionNotOwnedError
        | C::PublisherRevokedError => Failure::Connection(text),
        _ => Failure::Other(text),
    }
}

fn from_status(status: u16, text: String) -> Failure {
    match status {
        401 | 403 => Failure::Unauthorized(format!("{status}: {text}")),
        404 | 410 => Failure::NotFound(format!("{status}: {text}")),
        413 => Failure::TooLarge { bytes: 0 },
        400 => Failure::Invalid(format!("{status}: {text}")),
        408 | 429 | 500 | 502 | 503 | 504 => Failure::Busy(format!("{status}: {text}")),
        _ => Failure::Other(format!("{status}: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::event_hubs::EventHubsQueue;
    use crate::domain::key::Key;
    use crate::domain::write_event::WriteEvent;
    use crate::ports::WriteQueue;
    use azure_core::credentials::{AccessToken, TokenRequestOptions};
    use azure_core::time::OffsetDateTime;

    #[derive(Debug)]
    struct StaticToken;

    #[async_trait]
    impl TokenCredential for StaticToken {
        async fn get_token(
            &self,
            _scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            Ok(AccessToken::new("test-token", OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1)))
        }
    }

    fn settings() -> EventHubSettings {
        EventHubSettings {
            fully_qualified_namespace: "myns.servicebus.windows.net".into(),
            client_id: None,
            event_hub_name: "cache-writes".into(),
        }
    }

    #[test]
    fn credentials_can_be_made_without_a_network() {
        let mut s = settings();
        credential(&s).unwrap();
        s.client_id = Some("0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9".into());
        credential(&s).unwrap();
    }

    #[test]
    fn classifies_service_conditions() {
        let described = |condition: AmqpErrorCondition| {
            EventHubsError::from(AmqpError::from(AmqpErrorKind::AmqpDescribedError(AmqpDescribedError::new(
                condition,
                Some("details".into()),
                Default::default(),
            ))))
        };
        assert!(matches!(failure_of(&described(AmqpErrorCondition::ServerBusyError)), Failure::Busy(_)));
        assert!(matches!(failure_of(&described(AmqpErrorCondition::UnauthorizedAccess)), Failure::Unauthorized(_)));
        assert!(matches!(failure_of(&described(AmqpErrorCondition::NotFound)), Failure::NotFound(_)));
        assert!(matches!(
            failure_of(&described(AmqpErrorCondition::LinkPayloadSizeExceeded)),
            Failure::TooLarge { .. }
        ));
        assert!(matches!(failure_of(&described(AmqpErrorCondition::TimeoutError)), Failure::Connection(_)));
        assert!(matches!(failure_of(&described(AmqpErrorCondition::ArgumentError)), Failure::Invalid(_)));
        // Nested the way the SDK nests them: AMQP error → azure_core::Error → AMQP error → hub error.
        let wrapped = azure_core::Error::with_error(
            CoreErrorKind::Other,
            AmqpError::from(AmqpErrorKind::AmqpDescribedError(AmqpDescribedError::new(
                AmqpErrorCondition::UnauthorizedAccess,
                None,
                Default::default(),
            ))),
            "Could not ensure sender",
        );
        let error = EventHubsError::from(AmqpError::from(wrapped));
        assert!(matches!(failure_of(&error), Failure::Unauthorized(_)), "{:?}", failure_of(&error));
        let credential = EventHubsError::from(azure_core::Error::with_message(CoreErrorKind::Credential, "no MI"));
        assert!(matches!(failure_of(&credential), Failure::Credential(_)));
        let io =
            EventHubsError::from(azure_core::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(matches!(failure_of(&io), Failure::Connection(_)), "{:?}", failure_of(&io));
    }

    #[test]
    fn classifies_cbs_and_management_status_codes() {
        assert!(matches!(from_status(401, "x".into()), Failure::Unauthorized(_)));
        assert!(matches!(from_status(403, "x".into()), Failure::Unauthorized(_)));
        assert!(matches!(from_status(404, "x".into()), Failure::NotFound(_)));
        assert!(matches!(from_status(503, "x".into()), Failure::Busy(_)));
        assert!(matches!(from_status(429, "x".into()), Failure::Busy(_)));
        assert!(matches!(from_status(418, "x".into()), Failure::Other(_)));
    }

    /// The real SDK against a port nobody listens on (127.0.0.1 only): the publish fails fast as
    /// unavailable, and the sender backs off instead of reconnecting on every call.
    #[tokio::test]
    async fn unreachable_endpoint_is_unavailable() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let sender =
            SdkSender::new(&settings(), Arc::new(StaticToken), Some(format!("amqp://127.0.0.1:{port}"))).unwrap();
        let queue = EventHubsQueue::new(sender, &settings());
        let event = WriteEvent::delete(&Key::new("k").unwrap(), 1, crate::domain::time::Timestamp::EPOCH);
        let started = Instant::now();
        let err = queue.publish(&event).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        match &err {
            QueueError::Unavailable { message, retry_after, .. } => {
                assert!(message.contains("cannot reach Event Hubs"), "{message}");
                assert_eq!(*retry_after, Some(Duration::from_secs(1)));
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert!(queue.ping().await.is_err());
    }
}
