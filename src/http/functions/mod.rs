//! The functions' faces: one thin handler per function that turns an [`HttpCall`] (or a trigger's
//! [`Invocation`]) into a service call and the service's answer (or error) into a reply. No
//! envelope handling here (that is `host`) and no caching logic (that is `patterns`).

mod cache_aside;
mod cache_invalidate;
mod dead_letters;
mod event_hub_consumer;
mod health;
mod input;
mod reads;
mod refresh_ahead;
mod refresh_timer;
mod store_changes;
pub(crate) mod triggers;
mod write_behind;
mod write_through;

pub use triggers::TriggerFunction;

use super::AppState;
use super::host::payload::Invocation;
use super::host::{HttpCall, HttpReply, InvocationLog};
use triggers::{Outputs, TriggerFailure};

/// The HTTP functions this handler serves. Names are the function folder names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFunction {
    /// `CacheAside`: `api/cache-aside/{key?}`.
    CacheAside,
    /// `WriteThrough`: `api/write-through/{key?}`.
    WriteThrough,
    /// `WriteBehind`: `api/write-behind/{key?}`.
    WriteBehind,
    /// `DeadLetters`: `api/dead-letters/{id?}` (admin).
    DeadLetters,
    /// `RefreshAheadRead`: `api/refresh-ahead/{key?}`.
    RefreshAheadRead,
    /// `Health`: `api/health`.
    Health,
    /// `CacheInvalidate`: `api/cache/{key?}` (function key).
    CacheInvalidate,
    /// `CacheClear`: `api/cache-clear` (admin key).
    CacheClear,
    /// `Metrics`: `api/metrics` (admin key), Prometheus text.
    Metrics,
}

impl HttpFunction {
    /// Every HTTP function.
    pub(crate) const ALL: [Self; 9] = [
        Self::CacheAside,
        Self::WriteThrough,
        Self::WriteBehind,
        Self::RefreshAheadRead,
        Self::DeadLetters,
        Self::Health,
        // `cache-clear` before `cache`: route bases are matched in this order.
        Self::CacheClear,
        Self::CacheInvalidate,
        Self::Metrics,
    ];

    /// The function (folder) name, as the host posts it in payload mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::CacheAside => "CacheAside",
            Self::WriteThrough => "WriteThrough",
            Self::WriteBehind => "WriteBehind",
            Self::DeadLetters => "DeadLetters",
            Self::RefreshAheadRead => "RefreshAheadRead",
            Self::Health => "Health",
            Self::CacheInvalidate => "CacheInvalidate",
            Self::CacheClear => "CacheClear",
            Self::Metrics => "Metrics",
        }
    }

    /// The route without `{key?}` and without the `api/` prefix.
    pub(crate) fn route_base(self) -> &'static str {
        match self {
            Self::CacheAside => "cache-aside",
            Self::WriteThrough => "write-through",
            Self::WriteBehind => "write-behind",
            Self::DeadLetters => "dead-letters",
            Self::RefreshAheadRead => "refresh-ahead",
            Self::Health => "health",
            Self::CacheInvalidate => "cache",
            Self::CacheClear => "cache-clear",
            Self::Metrics => "metrics",
        }
    }

    /// Whether the route takes a `{key}`.
    pub(crate) fn takes_key(self) -> bool {
        !matches!(self, Self::Health | Self::CacheClear | Self::Metrics)
    }

    /// Allowed methods, upper-case.
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Self::CacheAside => &["GET", "POST"],
            Self::WriteThrough | Self::WriteBehind => &["PUT", "POST", "DELETE"],
            Self::DeadLetters => &["GET", "POST", "DELETE"],
            Self::RefreshAheadRead | Self::Health | Self::Metrics => &["GET"],
            Self::CacheInvalidate => &["DELETE", "POST"],
            Self::CacheClear => &["POST"],
        }
    }

    /// The methods the route takes in the form `keyed` (with a `{key}` in the path) or not: the
    /// host routes every method of `function.json` to both forms, but discarding a dead letter
    /// needs its id, and evicting one key in the path is `DELETE` only.
    pub(crate) fn methods_for(self, keyed: bool) -> &'static [&'static str] {
        match (self, keyed) {
            (Self::DeadLetters, false) => &["GET", "POST"],
            (Self::CacheInvalidate, true) => &["DELETE"],
            _ => self.methods(),
        }
    }

    /// The name of the trigger binding in `function.json`.
    pub fn trigger_binding(self) -> &'static str {
        "req"
    }

    /// The name of the HTTP output binding in `function.json`.
    pub(crate) fn output_binding(self) -> &'static str {
        "res"
    }

    /// The function called `name` (case-insensitive), if it is an HTTP function.
    pub(crate) fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// The function whose route `path` (after `/api/`) matches, with the raw (undecoded) key part:
    /// `None` for the bare route, `Some("")` when the path goes on past it with an empty segment.
    pub(crate) fn by_route(path: &str) -> Option<(Self, Option<&str>)> {
        Self::ALL.into_iter().find_map(|f| {
            let base = f.route_base();
            let rest = path.strip_prefix(base).or_else(|| {
                // Routes are case-insensitive on the host.
                (path.len() >= base.len()
                    && path.is_char_boundary(base.len())
                    && path[..base.len()].eq_ignore_ascii_case(base))
                .then(|| &path[base.len()..])
            })?;
            match rest {
                "" => Some((f, None)),
                _ if f.takes_key() => rest.strip_prefix('/').map(|k| (f, Some(k.trim_end_matches('/')))),
                "/" => Some((f, None)),
                _ => None,
            }
        })
    }
}

/// Runs `function` for `call`, and records it (`http.server.request.duration`, `cache.requests`).
pub(crate) async fn dispatch(
    state: &AppState,
    function: HttpFunction,
    call: &HttpCall,
    log: &mut InvocationLog,
) -> HttpReply {
    let started = std::time::Instant::now();
    let reply = run(state, function, call, log).await;
    let metrics = crate::telemetry::metrics();
    metrics.request(function.name(), reply.status, started.elapsed());
    let header = |name: &str| reply.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_ref());
    if let Some(outcome) = header("x-cache") {
        let tier = match header("x-cache-tier") {
            Some("l1") => Some("l1"),
            Some("l2") => Some("l2"),
            _ => None,
        };
        metrics.cache_request(function.name(), outcome, tier);
    }
    reply
}

async fn run(state: &AppState, function: HttpFunction, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    let allowed = function.methods_for(call.route_key.is_some());
    if !allowed.contains(&call.method.as_ref()) {
        let form = match (function.takes_key(), call.route_key.is_some()) {
            (false, _) => String::new(),
            (true, true) => format!(" at api/{}/{{key}}", function.route_base()),
            (true, false) => format!(" at api/{}", function.route_base()),
        };
        let hint = match (function, call.method.as_ref()) {
            (HttpFunction::DeadLetters, "DELETE") => "; discard one dead letter with DELETE api/dead-letters/{id}",
            (HttpFunction::CacheInvalidate, "POST") => {
                "; to evict one key send DELETE api/cache/{key}; POST api/cache takes {\"keys\":[…]} or {\"tags\":[…]}"
            }
            _ => "",
        };
        return HttpReply::error(
            405,
            "method_not_allowed",
            format!("{} accepts {}{form}, not {}{hint}", function.name(), allowed.join(", "), call.method),
        )
        .with_header("Allow", allowed.join(", "));
    }
    let services = &state.services;
    // The two read functions run inline (their hits are the hot path); the others are boxed, so
    // that this future is as small as a read's, not as large as the largest function's.
    match function {
        HttpFunction::CacheAside => cache_aside::handle(&services.cache_aside, call, log).await,
        HttpFunction::RefreshAheadRead => refresh_ahead::handle(&services.refresh_ahead, call, log).await,
        HttpFunction::WriteThrough => {
            Box::pin(write_through::handle(&services.write_through, state.max_value_bytes, call, log)).await
        }
        HttpFunction::WriteBehind => {
            Box::pin(write_behind::handle(&services.write_behind, state.max_value_bytes, call, log)).await
        }
        HttpFunction::DeadLetters => Box::pin(dead_letters::handle(&services.dead_letters, call, log)).await,
        HttpFunction::Health => Box::pin(health::handle(&services.health, log)).await,
        HttpFunction::CacheInvalidate => Box::pin(cache_invalidate::handle(&services.invalidation, call, log)).await,
        HttpFunction::CacheClear => Box::pin(cache_invalidate::clear(&services.invalidation, log)).await,
        HttpFunction::Metrics => {
            HttpReply::text(200, "text/plain; version=0.0.4; charset=utf-8", crate::telemetry::prometheus_text())
        }
    }
}

/// Runs the non-HTTP `function` for `invocation`.
pub(crate) async fn invoke(
    state: &AppState,
    function: TriggerFunction,
    invocation: &Invocation,
    log: &mut InvocationLog,
) -> Result<Outputs, TriggerFailure> {
    let started = std::time::Instant::now();
    let outputs = run_trigger(state, function, invocation, log).await;
    let status = if outputs.is_ok() { 200 } else { 500 };
    crate::telemetry::metrics().request(function.name(), status, started.elapsed());
    outputs
}

async fn run_trigger(
    state: &AppState,
    function: TriggerFunction,
    invocation: &Invocation,
    log: &mut InvocationLog,
) -> Result<Outputs, TriggerFailure> {
    let services = &state.services;
    match function {
        TriggerFunction::EventHubConsumer => {
            event_hub_consumer::invoke(&services.pushed_batches, invocation, log).await
        }
        TriggerFunction::RefreshAhead => {
            refresh_timer::invoke(&services.refresh_ahead, function.trigger_binding(), invocation, log).await
        }
        TriggerFunction::StoreChanges => {
            store_changes::invoke(&services.store_changes, state.changes.as_ref(), invocation, log).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(HttpFunction::by_route("cache-aside/abc"), Some((HttpFunction::CacheAside, Some("abc"))));
        assert_eq!(HttpFunction::by_route("Cache-Aside/a%2Fb/"), Some((HttpFunction::CacheAside, Some("a%2Fb"))));
        assert_eq!(HttpFunction::by_route("cache-aside"), Some((HttpFunction::CacheAside, None)));
        assert_eq!(HttpFunction::by_route("cache-aside/"), Some((HttpFunction::CacheAside, Some(""))));
        assert_eq!(HttpFunction::by_route("health/"), Some((HttpFunction::Health, None)));
        assert_eq!(HttpFunction::by_route("write-through/x/y"), Some((HttpFunction::WriteThrough, Some("x/y"))));
        assert_eq!(HttpFunction::by_route("health"), Some((HttpFunction::Health, None)));
        assert_eq!(HttpFunction::by_route("refresh-ahead/k"), Some((HttpFunction::RefreshAheadRead, Some("k"))));
        assert_eq!(HttpFunction::by_route("health/x"), None);
        assert_eq!(HttpFunction::by_route("cache-asidex"), None);
        assert_eq!(HttpFunction::by_route("cache/k"), Some((HttpFunction::CacheInvalidate, Some("k"))));
        assert_eq!(HttpFunction::by_route("cache"), Some((HttpFunction::CacheInvalidate, None)));
        assert_eq!(HttpFunction::by_route("cache-clear"), Some((HttpFunction::CacheClear, None)));
        assert_eq!(HttpFunction::by_route("cache-clear/x"), None);
        assert_eq!(HttpFunction::by_route("metrics"), Some((HttpFunction::Metrics, None)));
        assert_eq!(HttpFunction::by_name("cacheaside"), Some(HttpFunction::CacheAside));
    }

    #[test]
    fn methods_per_form_are_among_the_function_json_methods() {
        for function in HttpFunction::ALL {
            for keyed in [false, true] {
                let allowed = function.methods_for(keyed);
                assert!(!allowed.is_empty());
                assert!(allowed.iter().all(|m| function.methods().contains(m)), "{function:?} {keyed}");
            }
        }
        assert_eq!(HttpFunction::DeadLetters.methods_for(false), ["GET", "POST"]);
        assert_eq!(HttpFunction::CacheInvalidate.methods_for(true), ["DELETE"]);
    }
}
