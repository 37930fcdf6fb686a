//! `EventHubConnection__*` and `EventHubName`: the write-behind queue on Azure Event Hubs.
//!
//! These are the settings the Functions Event Hubs trigger reads for an identity-based connection
//! with the prefix `EventHubConnection`, so one set of app settings serves the trigger (which drains
//! the hub) and the handler (which sends to it).

use super::SettingsError;
use crate::adapters::event_hubs::EventHubSettings;

/// The namespace setting; its presence turns the Event Hubs queue on.
pub(crate) const NAMESPACE: &str = "EventHubConnection__fullyQualifiedNamespace";
/// The user-assigned managed identity's client ID (optional).
pub(crate) const CLIENT_ID: &str = "EventHubConnection__clientId";
/// The connection-string form of the setting, which this service cannot use.
pub(crate) const CONNECTION_STRING: &str = "EventHubConnection";
/// The event hub's name.
pub(crate) const EVENT_HUB_NAME: &str = "EventHubName";
/// `EventHubName` when it is not set.
pub(crate) const DEFAULT_EVENT_HUB_NAME: &str = "cache-writes";

/// Reads the Event Hubs settings: `None` when `EventHubConnection__fullyQualifiedNamespace` is not
/// set (the queue is then the Redis Stream).
pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<EventHubSettings>, SettingsError> {
    let Some(namespace) = get(NAMESPACE) else {
        if get(CONNECTION_STRING).is_some() {
            // Never echo the value: it is a connection string with a SharedAccessKey.
            return Err(SettingsError::new(
                CONNECTION_STRING,
                "is set, but the handler authenticates to Event Hubs with Microsoft Entra ID only \
                 (no connection strings or SAS keys); use identity-based settings: \
                 EventHubConnection__fullyQualifiedNamespace (and EventHubConnection__clientId for a \
                 user-assigned identity) with the Azure Event Hubs Data Sender role",
            ));
        }
        return Ok(None);
    };
    let fully_qualified_namespace = parse_namespace(&namespace)?;
    let client_id = get(CLIENT_ID);
    if let Some(id) = &client_id
        && !is_guid(id)
    {
        return Err(SettingsError::new(
            CLIENT_ID,
            "must be the client ID (a GUID) of a user-assigned managed identity, \
             e.g. 00000000-0000-0000-0000-000000000000",
        ));
    }
    let event_hub_name = get(EVENT_HUB_NAME).unwrap_or_else(|| DEFAULT_EVENT_HUB_NAME.to_string());
    if !is_event_hub_name(&event_hub_name) {
        return Err(SettingsError::new(
            EVENT_HUB_NAME,
            format!(
                "must be an event hub name (1-256 letters, digits, '.', '-', '_', starting and ending \
                 with a letter or digit), got {event_hub_name:?}"
            ),
        ));
    }
    Ok(Some(EventHubSettings { fully_qualified_namespace, client_id, event_hub_name }))
}

/// Checks the namespace is a bare host name: what the portal shows as "Host name".
fn parse_namespace(raw: &str) -> Result<String, SettingsError> {
    let bad = |problem: &str| SettingsError::new(NAMESPACE, problem.to_string());
    if raw.contains("://") {
        return Err(bad("must be a host name without a scheme, e.g. myns.servicebus.windows.net (not sb://…)"));
    }
    if raw.contains(';') || raw.contains('=') {
        return Err(bad("must be a host name, e.g. myns.servicebus.windows.net, not a connection string"));
    }
    let host = raw.strip_suffix('/').unwrap_or(raw);
    if host.contains(['/', ':', '@', ' ']) {
        return Err(bad("must be a host name only, e.g. myns.servicebus.windows.net, without port or path"));
    }
    let valid = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(bad("is not a valid host name; expected e.g. myns.servicebus.windows.net"));
    }
    Ok(host.to_ascii_lowercase())
}

fn is_guid(raw: &str) -> bool {
    let groups: Vec<&str> = raw.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_event_hub_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=256).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<EventHubSettings>, SettingsError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn absent_unless_the_namespace_is_set() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[(EVENT_HUB_NAME, "other"), (CLIENT_ID, "x")]).unwrap(), None);
    }

    #[test]
    fn namespace_with_defaults_and_client_id() {
        let s = parse(&[(NAMESPACE, "MyNs.servicebus.windows.net")]).unwrap().unwrap();
        assert_eq!(s.fully_qualified_namespace, "myns.servicebus.windows.net");
        assert_eq!(s.event_hub_name, "cache-writes");
        assert_eq!(s.client_id, None);
        let s = parse(&[
            (NAMESPACE, "myns.servicebus.windows.net/"),
            (CLIENT_ID, "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"),
            (EVENT_HUB_NAME, "writes_2.v1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.fully_qualified_namespace, "myns.servicebus.windows.net");
        assert_eq!(s.client_id.as_deref(), Some("0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"));
        assert_eq!(s.event_hub_name, "writes_2.v1");
    }

    #[test]
    fn bad_namespaces_name_the_setting() {
        for bad in [
            "sb://myns.servicebus.windows.net/",
            "amqps://myns.servicebus.windows.net",
            "myns.servicebus.windows.net:5671",
            "myns.servicebus.windows.net/hub",
            "my_ns.servicebus.windows.net",
            "-myns.servicebus.windows.net",
            "myns..windows.net",
            "Endpoint=sb://myns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s3cret",
        ] {
            let err = parse(&[(NAMESPACE, bad)]).unwrap_err();
            assert_eq!(err.name, NAMESPACE, "{bad}");
            let line = err.to_string();
            assert!(line.starts_with("setting `EventHubConnection__fullyQualifiedNamespace`"), "{line}");
            assert!(!line.contains("s3cret"), "secret leaked: {line}");
        }
    }

    #[test]
    fn a_connection_string_is_refused_with_the_way_out_and_without_the_key() {
        let err = parse(&[(
            CONNECTION_STRING,
            "Endpoint=sb://myns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=s3cret=",
        )])
        .unwrap_err();
        assert_eq!(err.name, CONNECTION_STRING);
        let line = err.to_string();
        assert!(line.contains("EventHubConnection__fullyQualifiedNamespace"), "{line}");
        assert!(line.contains("Azure Event Hubs Data Sender"), "{line}");
        assert!(!line.contains("s3cret"), "secret leaked: {line}");
        // With the identity-based setting present as well, the identity-based one is used.
        let s = parse(&[(CONNECTION_STRING, "Endpoint=sb://x/;SharedAccessKey=s3cret"), (NAMESPACE, "x.example")]);
        assert_eq!(s.unwrap().unwrap().fully_qualified_namespace, "x.example");
    }

    #[test]
    fn settings_carry_the_event_hub_settings() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let s = super::super::Settings::from_map(&map(&[("RedisCache", "localhost")])).unwrap();
        assert_eq!(s.event_hubs, None);
        let s =
            super::super::Settings::from_map(&map(&[("RedisCache", "localhost"), (NAMESPACE, "ns.example")])).unwrap();
        assert_eq!(s.event_hubs.unwrap().event_hub_name, "cache-writes");
        let err =
            super::super::Settings::from_map(&map(&[("RedisCache", "localhost"), (NAMESPACE, "sb://x")])).unwrap_err();
        assert_eq!(err.name, NAMESPACE);
    }

    #[test]
    fn bad_client_id_and_hub_name() {
        let err = parse(&[(NAMESPACE, "a.b"), (CLIENT_ID, "my-identity")]).unwrap_err();
        assert_eq!(err.name, CLIENT_ID);
        for bad in ["-writes", "writes-", "a b", &"x".repeat(257)] {
            let err = parse(&[(NAMESPACE, "a.b"), (EVENT_HUB_NAME, bad)]).unwrap_err();
            assert_eq!(err.name, EVENT_HUB_NAME, "{bad}");
        }
    }
}
