//! Forwarded mode: the host re-sends the caller's HTTP request to the same path, `/api` prefix
//! included (HOST-PROTOCOL.md §4), and passes our status, headers and body back unchanged.

use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;

use super::{HttpCall, parse_query};

/// Builds an [`HttpCall`] from a forwarded request. `route_key` is the decoded `{key}` part.
pub fn http_call(method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes, route_key: Option<String>) -> HttpCall {
    HttpCall {
        method: method.as_str().to_ascii_uppercase(),
        route_key,
        query: uri.query().map(parse_query).unwrap_or_default(),
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                value.to_str().ok().map(|v| (name.as_str().to_ascii_lowercase(), v.to_string()))
            })
            .collect(),
        body,
    }
}
