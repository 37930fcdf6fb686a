//! HTTP requests to `/api/...`: straight from a caller (no host), through the host's reverse proxy
//! (`enableProxyingHttpRequest`, which adds `x-ms-invocation-id`), or through its legacy forwarding
//! (`enableForwardingHttpRequest`). Our status, headers and body go back unchanged.
//!
//! How the key in the path is read (see docs/host-protocol.md):
//! * directly: the path segment is percent-decoded once, exactly as the caller encoded it;
//! * proxied: the host's server decoded every escape but `%2F`, and the proxy escaped the result
//!   again, so one decoding gives what the host saw; a `%2F` left in it stands for `/` (the host
//!   cannot tell an encoded `/` from a literal `%2F`, and the API defines it as `/`);
//! * forwarded (legacy): the host re-parsed its decoded path as a URL, which cuts it at `?` or `#`,
//!   turns `\` into `/` and decodes `%25XX` twice: such keys are lost before they arrive, which is
//!   why `host.json` uses the invocation payload instead.

use std::borrow::Cow;

use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;

use super::{HttpCall, RequestHeaders, parse_query, percent_decode};

/// The header the host's reverse proxy adds (its invocation id).
pub(crate) const PROXY_HEADER: &str = "x-ms-invocation-id";

/// The header the host adds to every request it sends the handler (forwarded or proxied).
const HOST_VERSION_HEADER: &str = "x-azure-functions-hostversion";

/// Why a key in the path is refused under the host's legacy forwarding.
pub(crate) const LEGACY_FORWARDING_LOSES_KEYS: &str = "this request was forwarded by the Functions host (host.json sets `enableForwardingHttpRequest: true`), which re-parses the path and changes keys holding `?`, `#`, `\\` or `%` into other keys, so keys in the path are refused; send the key in `?key=` (percent-encoded), or set `enableForwardingHttpRequest` to false in host.json (the invocation payload carries every key intact)";

/// True for a request the host forwarded the legacy way (`enableForwardingHttpRequest`): it
/// carries the host's version header but not the reverse proxy's invocation id.
pub(crate) fn is_legacy_forwarding(headers: &HeaderMap) -> bool {
    headers.contains_key(HOST_VERSION_HEADER) && !headers.contains_key(PROXY_HEADER)
}

/// Why the key in a path cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key in the path is not valid percent-encoded UTF-8")]
pub(crate) struct BadPathKey;

/// The key a path segment names, for a request with `headers`.
pub(crate) fn route_key(raw: &str, headers: &HeaderMap) -> Result<String, BadPathKey> {
    let decoded = percent_decode(raw).ok_or(BadPathKey)?;
    Ok(if headers.contains_key(PROXY_HEADER) { decoded.replace("%2F", "/").replace("%2f", "/") } else { decoded })
}

/// Builds an [`HttpCall`] from a forwarded request. `route_key` is the decoded `{key}` part.
pub fn http_call(method: &Method, uri: &Uri, headers: HeaderMap, body: Bytes, route_key: Option<String>) -> HttpCall {
    HttpCall {
        method: method_name(method),
        route_key,
        path_key_unusable: false,
        query: uri.query().map(parse_query).unwrap_or_default(),
        headers: RequestHeaders::Received(headers),
        body,
    }
}

/// The method's upper-case name; the usual ones are constants.
fn method_name(method: &Method) -> Cow<'static, str> {
    const USUAL: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"];
    match USUAL.iter().find(|name| method.as_str() == **name) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(method.as_str().to_ascii_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_the_path() {
        let direct = HeaderMap::new();
        let mut proxied = HeaderMap::new();
        proxied.insert(PROXY_HEADER, "id".parse().unwrap());
        assert_eq!(route_key("a%2Fb%20c", &direct).unwrap(), "a/b c");
        assert_eq!(route_key("a%252Fb", &direct).unwrap(), "a%2Fb", "direct callers can send a literal %2F");
        assert_eq!(route_key("a%252Fb", &proxied).unwrap(), "a/b", "through the proxy, %2F stands for /");
        assert_eq!(route_key("a%2541", &proxied).unwrap(), "a%41");
        assert_eq!(route_key("a%3Fb%23c%5Cd", &proxied).unwrap(), "a?b#c\\d");
        assert_eq!(route_key("%zz", &direct), Err(BadPathKey));
    }
}
