//! The real Event Hubs producer (azure_messaging_eventhubs 0.15 over fe2o3-amqp) against a local AMQP
//! endpoint that plays Event Hubs: it answers the `$cbs` put-token and `$management` READ calls the
//! SDK makes and accepts (or rejects, on demand) the events sent to the hub. It listens on 127.0.0.1
//! only, over plain AMQP with SASL ANONYMOUS, reached through the SDK's custom-endpoint option.
//!
//! What this proves: the bytes on the wire carry the partition key, content type, properties and
//! body we intend; `publish` returns only after the endpoint accepted; the service's answers map to
//! the right `QueueError`s; the producer reconnects after the connection is lost. What it cannot
//! prove: anything about the real service's behaviour beyond what the fake imitates.

#![cfg(feature = "eventhubs")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use cachepatterns::adapters::event_hubs::EventHubSettings;
use cachepatterns::adapters::event_hubs::EventHubsQueue;
use cachepatterns::adapters::event_hubs::sdk::SdkSender;
use cachepatterns::domain::key::Key;
use cachepatterns::domain::time::Timestamp as WallTime;
use cachepatterns::domain::write_event::WriteEvent;
use cachepatterns::ports::{QueueError, WriteQueue};
use fe2o3_amqp::acceptor::{ConnectionAcceptor, LinkAcceptor, LinkEndpoint, SaslAnonymousMechanism, SessionAcceptor};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const NAMESPACE: &str = "fakens.servicebus.windows.net";
const HUB: &str = "cache-writes";

/// One transfer the fake hub received on the hub's send link.
#[derive(Debug, Clone)]
struct Received {
    message_format: Option<u32>,
    partition_key: Option<String>,
    /// The events inside (a batch envelope carries them as serialized messages in data sections).
    events: Vec<Message<Body<Value>>>,
}

/// The fake Event Hubs endpoint.
struct FakeHub {
    port: u16,
    max_message_size: u64,
    /// What the CBS node answers put-token with (202 = accepted).
    cbs_status: Mutex<u16>,
    /// When set, the hub rejects sends with this AMQP error condition.
    reject_with: Mutex<Option<definitions::ErrorCondition>>,
    received: Mutex<Vec<Received>>,
    tokens: Mutex<Vec<(String, String)>>,
    connections: AtomicUsize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl FakeHub {
    async fn start(max_message_size: u64) -> Arc<Self> {
        Self::start_on(0, max_message_size).await
    }

    /// Starts the fake on its own thread and single-threaded runtime, like a separate server.
    async fn start_on(port: u16, max_message_size: u64) -> Arc<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let hub = Arc::new(Self {
            port: listener.local_addr().unwrap().port(),
            max_message_size,
            cbs_status: Mutex::new(202),
            reject_with: Mutex::new(None),
            received: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let accepting = hub.clone();
        let (started, is_started) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let hub = accepting.clone();
                let task = tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        hub.connections.fetch_add(1, Ordering::SeqCst);
                        let connection = tokio::spawn(hub.clone().serve_connection(stream));
                        hub.tasks.lock().unwrap().push(connection);
                    }
                });
                accepting.tasks.lock().unwrap().push(task);
                let _ = started.send(());
                // Runs until kill() aborts the tasks; dropping the runtime then closes every socket.
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if accepting.tasks.lock().unwrap().is_empty() {
                        break;
                    }
                }
            });
        });
        is_started.await.unwrap();
        hub
    }

    /// Drops every connection and stops listening (the port stays reserved by nobody).
    fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn endpoint(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    async fn serve_connection(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let acceptor = ConnectionAcceptor::builder()
            .container_id("fake-eventhubs")
            .sasl_acceptor(SaslAnonymousMechanism::new())
            .build();
        let Ok(mut connection) = acceptor.accept(stream).await else { return };
        let sessions = SessionAcceptor::new();
        let mut running = Vec::new();
        while let Ok(session) = sessions.accept(&mut connection).await {
            running.push(tokio::spawn(self.clone().serve_session(session)));
        }
        // Aborting this task (kill) drops the sessions' tasks with it.
        for task in running {
            task.abort();
        }
    }

    async fn serve_session(self: Arc<Self>, mut session: fe2o3_amqp::acceptor::ListenerSessionHandle) {
        let links = LinkAcceptor::builder().max_message_size(self.max_message_size).build();
        let mut request_links: HashMap<String, Receiver> = HashMap::new();
        let mut running = Vec::new();
        while let Ok(link) = links.accept(&mut session).await {
            match link {
                LinkEndpoint::Receiver(receiver) => {
                    let address = receiver.target().as_ref().and_then(|t| t.address.clone()).unwrap_or_default();
                    if address == "$cbs" || address == "$management" {
                        request_links.insert(address, receiver);
                    } else {
                        running.push(tokio::spawn(self.clone().serve_hub_link(receiver)));
                    }
                }
                LinkEndpoint::Sender(sender) => {
                    let address = sender.source().as_ref().and_then(|s| s.address.clone()).unwrap_or_default();
                    if let Some(requests) = request_links.remove(&address) {
                        running.push(tokio::spawn(self.clone().serve_requests(address, requests, sender)));
                    }
                }
            }
        }
        for task in running {
            task.abort();
        }
    }

    /// The hub's own link: record (or reject) every transfer.
    async fn serve_hub_link(self: Arc<Self>, mut receiver: Receiver) {
        while let Ok(delivery) = receiver.recv::<Body<Value>>().await {
            let reject = self.reject_with.lock().unwrap().clone();
            if let Some(condition) = reject {
                let error = definitions::Error::new(condition, Some("the fake hub says no".to_string()), None);
                let _ = receiver.reject(&delivery, error).await;
                continue;
            }
            let message = delivery.message();
            let partition_key = message.message_annotations.as_ref().and_then(|annotations| {
                annotations.0.iter().find_map(|(key, value)| match (key, value) {
                    (OwnedKey::Symbol(symbol), Value::String(pk)) if symbol.0 == "x-opt-partition-key" => {
                        Some(pk.clone())
                    }
                    _ => None,
                })
            });
            let events = match &message.body {
                Body::Data(sections) => sections
                    .iter()
                    .map(|data| {
                        // (fe2o3 decodes a bare message only through its doc-hidden wrapper.)
                        serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&data.0)
                            .map(|m| m.0)
                            .expect("a batch holds serialized messages")
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let received = Received { message_format: *delivery.message_format(), partition_key, events };
            self.received.lock().unwrap().push(received);
            let _ = receiver.accept(&delivery).await;
        }
    }

    /// `$cbs` and `$management`: one response per request on the paired reply link.
    async fn serve_requests(self: Arc<Self>, node: String, mut requests: Receiver, mut replies: Sender) {
        while let Ok(delivery) = requests.recv::<Body<Value>>().await {
            let _ = requests.accept(&delivery).await;
            let request = delivery.into_message();
            let property = |name: &str| match request.application_properties.as_ref().and_then(|p| p.0.get(name)) {
                Some(SimpleValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let (status, body) = if node == "$cbs" {
                let token = match &request.body {
                    Body::Value(v) => match &v.0 {
                        Value::String(s) => s.clone(),
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                self.tokens.lock().unwrap().push((property("name"), token));
                (*self.cbs_status.lock().unwrap(), Value::Null)
            } else {
                let mut attributes = OrderedMap::new();
                attributes.insert(Value::from("name"), Value::from(property("name")));
                attributes.insert(Value::from("created_at"), Value::Timestamp(Timestamp::from_milliseconds(0)));
                attributes.insert(Value::from("partition_count"), Value::Int(2));
                attributes.insert(
                    Value::from("partition_ids"),
                    Value::Array(vec![Value::from("0"), Value::from("1")].into()),
                );
                (200, Value::Map(attributes))
            };
            let reply = Message::builder()
                .properties(Properties {
                    correlation_id: request.properties.as_ref().and_then(|p| p.message_id.clone()),
                    ..Default::default()
                })
                .application_properties(
                    ApplicationProperties::builder()
                        .insert("status-code", SimpleValue::Int(i32::from(status)))
                        .insert("status-description", SimpleValue::String(format!("fake {status}")))
                        .build(),
                )
                .value(body)
                .build();
            if replies.send(reply).await.is_err() {
                break;
            }
        }
    }
}

#[derive(Debug)]
struct StaticToken;

#[async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let expires = azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1);
        Ok(AccessToken::new("fake-entra-token", expires))
    }
}

fn settings() -> EventHubSettings {
    EventHubSettings {
        fully_qualified_namespace: NAMESPACE.to_string(),
        client_id: None,
        event_hub_name: HUB.to_string(),
    }
}

fn queue_for(hub: &FakeHub) -> EventHubsQueue {
    let sender = SdkSender::new(&settings(), Arc::new(StaticToken), Some(hub.endpoint())).unwrap();
    EventHubsQueue::new(sender, &settings())
}

fn app_property(message: &Message<Body<Value>>, name: &str) -> Option<SimpleValue> {
    message.application_properties.as_ref().and_then(|p| p.0.get(name).cloned())
}

fn body_text(message: &Message<Body<Value>>) -> String {
    match &message.body {
        Body::Data(sections) => String::from_utf8(sections.iter().flat_map(|d| d.0.to_vec()).collect()).unwrap(),
        other => panic!("expected a data body, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_sends_one_event_per_write_with_the_key_as_partition_key() {
    let hub = FakeHub::start(1024 * 1024).await;
    let queue = queue_for(&hub);
    let k1 = Key::new("user:1").unwrap();
    let k2 = Key::new("ключ/2 with spaces").unwrap();
    let events = [
        WriteEvent::upsert(&k1, json!({"name": "Ada"}), 10, WallTime::EPOCH),
        WriteEvent::upsert(&k2, json!([1, 2, 3]), 11, WallTime::EPOCH),
        WriteEvent::delete(&k1, 12, WallTime::EPOCH),
    ];
    for event in &events {
        queue.publish(event).await.unwrap();
    }
    queue.ping().await.unwrap();

    let received = hub.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "one transfer per publish");
    for (got, sent) in received.iter().zip(&events) {
        assert_eq!(got.message_format, Some(0x8001_3700), "sent as an Event Hubs batch");
        assert_eq!(got.partition_key.as_deref(), Some(sent.key.as_str()));
        assert_eq!(got.events.len(), 1);
        let event = &got.events[0];
        assert_eq!(WriteEvent::parse(&body_text(event)).unwrap(), *sent);
        let properties = event.properties.as_ref().unwrap();
        assert_eq!(properties.content_type.as_ref().map(|c| c.0.as_str()), Some("application/json"));
        assert!(properties.message_id.is_some());
        let op = if sent.value.is_some() { "upsert" } else { "delete" };
        assert_eq!(app_property(event, "op"), Some(SimpleValue::String(op.into())));
        assert_eq!(app_property(event, "version"), Some(SimpleValue::Long(sent.version as i64)));
        // The inner event carries the partition key too (the SDK annotates each one).
        let inner_pk = event.message_annotations.as_ref().map(|a| format!("{:?}", a.0));
        assert!(inner_pk.unwrap_or_default().contains(&sent.key), "inner event lacks x-opt-partition-key");
    }
    // The SDK authorized the hub's path with our token over $cbs, on one connection.
    let tokens = hub.tokens.lock().unwrap().clone();
    assert!(
        tokens.iter().any(|(audience, token)| audience.ends_with(HUB) && token == "fake-entra-token"),
        "{tokens:?}"
    );
    assert_eq!(hub.connections.load(Ordering::SeqCst), 1);
    hub.kill();
}

#[tokio::test]
async fn long_keys_use_the_short_partition_key() {
    let hub = FakeHub::start(1024 * 1024).await;
    let queue = queue_for(&hub);
    let key = Key::new("x".repeat(400)).unwrap();
    queue.publish(&WriteEvent::delete(&key, 1, WallTime::EPOCH)).await.unwrap();
    let pk = hub.received.lock().unwrap()[0].partition_key.clone().unwrap();
    assert_eq!(pk, cachepatterns::adapters::event_hubs::partition_key(key.as_str()));
    assert_eq!(pk.len(), 128);
    hub.kill();
}

#[tokio::test]
async fn refused_token_is_rejected_with_the_role_to_assign() {
    let hub = FakeHub::start(1024 * 1024).await;
    *hub.cbs_status.lock().unwrap() = 401;
    let queue = queue_for(&hub);
    let err = queue.publish(&WriteEvent::delete(&Key::new("k").unwrap(), 1, WallTime::EPOCH)).await.unwrap_err();
    match err {
        QueueError::Rejected { message, .. } => assert!(message.contains("Azure Event Hubs Data Sender"), "{message}"),
        other => panic!("expected rejected, got {other:?}"),
    }
    assert!(hub.received.lock().unwrap().is_empty());
    hub.kill();
}

#[tokio::test]
async fn server_busy_is_unavailable_with_retry_after() {
    let hub = FakeHub::start(1024 * 1024).await;
    *hub.reject_with.lock().unwrap() =
        Some(definitions::ErrorCondition::Custom(Symbol::from("com.microsoft:server-busy")));
    let queue = queue_for(&hub);
    let err = queue.publish(&WriteEvent::delete(&Key::new("k").unwrap(), 1, WallTime::EPOCH)).await.unwrap_err();
    match err {
        QueueError::Unavailable { message, retry_after, .. } => {
            assert!(message.contains("busy"), "{message}");
            assert_eq!(retry_after, Some(Duration::from_secs(10)));
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    // Once the hub accepts again, so does publish.
    *hub.reject_with.lock().unwrap() = None;
    queue.publish(&WriteEvent::delete(&Key::new("k").unwrap(), 2, WallTime::EPOCH)).await.unwrap();
    hub.kill();
}

#[tokio::test]
async fn an_event_over_the_link_limit_is_rejected_before_sending() {
    let hub = FakeHub::start(4096).await;
    let queue = queue_for(&hub);
    let big = WriteEvent::upsert(&Key::new("big").unwrap(), json!("v".repeat(10_000)), 1, WallTime::EPOCH);
    match queue.publish(&big).await.unwrap_err() {
        QueueError::TooLarge(message) => assert!(message.contains("MaxValueBytes"), "{message}"),
        other => panic!("expected too large, got {other:?}"),
    }
    queue.publish(&WriteEvent::upsert(&Key::new("small").unwrap(), json!(1), 2, WallTime::EPOCH)).await.unwrap();
    assert_eq!(hub.received.lock().unwrap().len(), 1);
    hub.kill();
}

#[tokio::test]
async fn publishes_recover_after_the_connection_is_lost() {
    let hub = FakeHub::start(1024 * 1024).await;
    let queue = queue_for(&hub);
    let key = Key::new("k").unwrap();
    queue.publish(&WriteEvent::delete(&key, 1, WallTime::EPOCH)).await.unwrap();
    // The endpoint goes away: publishes fail as unavailable, quickly.
    hub.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = queue.publish(&WriteEvent::delete(&key, 2, WallTime::EPOCH)).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(11), "{:?}", started.elapsed());
    // A new endpoint on the same port: the producer reconnects by itself.
    let revived = FakeHub::start_on(hub.port, 1024 * 1024).await;
    let mut last = None;
    for _ in 0..20 {
        match queue.publish(&WriteEvent::delete(&key, 3, WallTime::EPOCH)).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(last.is_none(), "no reconnect: {last:?}");
    assert_eq!(revived.received.lock().unwrap().len(), 1);
    revived.kill();
}

/// Not an assertion: prints how many publishes per second one producer manages against a local
/// endpoint, sequentially and with 32 concurrent callers (the SDK serializes sends on one link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_figures() {
    let hub = FakeHub::start(1024 * 1024).await;
    let queue = Arc::new(queue_for(&hub));
    queue.publish(&WriteEvent::delete(&Key::new("warm").unwrap(), 1, WallTime::EPOCH)).await.unwrap();
    let n = 300;
    let started = Instant::now();
    for i in 0..n {
        if let Err(e) =
            queue.publish(&WriteEvent::delete(&Key::new(format!("seq{i}")).unwrap(), 1, WallTime::EPOCH)).await
        {
            panic!("publish {i} failed: {e}; the hub received {}", hub.received.lock().unwrap().len());
        }
    }
    let sequential = started.elapsed();
    let started = Instant::now();
    let mut callers = Vec::new();
    for c in 0..32 {
        let queue = queue.clone();
        callers.push(tokio::spawn(async move {
            for i in 0..n / 32 {
                queue
                    .publish(&WriteEvent::delete(&Key::new(format!("c{c}-{i}")).unwrap(), 1, WallTime::EPOCH))
                    .await
                    .unwrap();
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let concurrent = started.elapsed();
    let per_sec = |count: usize, took: Duration| count as f64 / took.as_secs_f64();
    println!(
        "eventhubs publish against a local endpoint: sequential {:.0}/s ({:?} each), 32 callers {:.0}/s",
        per_sec(n, sequential),
        sequential / n as u32,
        per_sec(n / 32 * 32, concurrent)
    );
    hub.kill();
}

/// Guards against a race in fe2o3-amqp 0.14.1 (the SDK's AMQP stack).
///
/// `SenderLink::send_payload_with_transfer` hands the transfer to the session engine first and only
/// then records the delivery in the link's unsettled map. On a multi-thread runtime the session
/// engine (another worker) can process the peer's `accepted` disposition in between; it finds no
/// unsettled entry and drops the outcome, and the send waits forever. With the SDK driven from the
/// handler's multi-thread runtime, this test lost one or more confirmations in about every other
/// run against this endpoint. `SdkSender` therefore runs the SDK on its own single-threaded runtime.
/// The callers here are on a multi-thread runtime, like the handler's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_on_a_multi_thread_runtime_are_confirmed() {
    let hub = FakeHub::start(1024 * 1024).await;
    let queue = queue_for(&hub).with_timeouts(Duration::from_secs(2), Duration::from_secs(2));
    let mut lost = Vec::new();
    for i in 0..300 {
        if let Err(e) =
            queue.publish(&WriteEvent::delete(&Key::new(format!("k{i}")).unwrap(), 1, WallTime::EPOCH)).await
        {
            lost.push((i, e.to_string()));
        }
    }
    let received = hub.received.lock().unwrap().len();
    hub.kill();
    assert!(
        lost.is_empty(),
        "{} of 300 sends were not confirmed although the hub accepted {received}: {lost:?}",
        lost.len()
    );
}
