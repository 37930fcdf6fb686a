//! The instruments every layer records to. Names follow the OpenTelemetry semantic conventions
//! where one exists (`http.server.request.duration`, `db.client.operation.duration`); the rest are
//! the service's own, under `cache.*`, `write_behind.*`, `refresh_ahead.*`. docs/observability.md
//! lists them with their attributes.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, ObservableCounter};

/// Bucket bounds (seconds) for latencies from tens of microseconds to seconds.
const LATENCY_BOUNDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The instrument handles (cheap to use; created once per process).
pub struct Metrics {
    /// `cache.requests`: reads and writes by function and outcome (`hit`, `miss`, `stale`,
    /// `bypass`, `updated`) and tier (`l1`, `l2`), counted in [`CacheRequestCounts`].
    _cache_requests: ObservableCounter<u64>,
    /// `http.server.request.duration` (s) by function (`http.route`) and status.
    pub request_duration: Histogram<f64>,
    /// `db.client.operation.duration` (s) of Redis round trips and store calls, by system
    /// (`redis`, `sqlite`, `cosmosdb`), operation and outcome (`error.type` on failure).
    pub db_duration: Histogram<f64>,
    /// `cosmosdb.request_charge` (RU) by operation.
    pub cosmos_request_charge: Counter<f64>,
    /// `write_behind.events` by outcome (`enqueued`, `applied`, `coalesced`, `stale`, `retried`,
    /// `dead_lettered`).
    pub write_behind_events: Counter<u64>,
    /// `refresh_ahead.refreshes` by trigger (`read`, `timer`) and outcome.
    pub refreshes: Counter<u64>,
    /// `cache.invalidations` by scope (`keys`, `tags`, `all`) and outcome (`done`, `pending`).
    pub invalidations: Counter<u64>,
    /// Last sampled write-behind backlog (`write_behind.backlog`: queued, not yet applied).
    backlog: AtomicI64,
    /// Last sampled breaker state (`redis.breaker.open`: 1 open, 0 closed).
    breaker_open: AtomicI64,
    /// Last sampled near-cache size (`cache.near.entries`).
    near_entries: AtomicI64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    super::ensure_installed();
    let meter = opentelemetry::global::meter("redis-cache-patterns");
    let metrics = Metrics {
        _cache_requests: meter
            .u64_observable_counter("cache.requests")
            .with_description("Cache reads and writes by outcome")
            .with_callback(|observer| CACHE_REQUESTS.observe(|n, attributes| observer.observe(n, attributes)))
            .build(),
        request_duration: meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of function invocations")
            .with_boundaries(LATENCY_BOUNDS.to_vec())
            .build(),
        db_duration: meter
            .f64_histogram("db.client.operation.duration")
            .with_unit("s")
            .with_description("Duration of Redis round trips and store calls")
            .with_boundaries(LATENCY_BOUNDS.to_vec())
            .build(),
        cosmos_request_charge: meter
            .f64_counter("cosmosdb.request_charge")
            .with_unit("{request_unit}")
            .with_description("Cosmos DB request units spent")
            .build(),
        write_behind_events: meter
            .u64_counter("write_behind.events")
            .with_description("Queued writes by what became of them")
            .build(),
        refreshes: meter.u64_counter("refresh_ahead.refreshes").with_description("Refresh-ahead refreshes").build(),
        invalidations: meter.u64_counter("cache.invalidations").with_description("Invalidations issued").build(),
        backlog: AtomicI64::new(0),
        breaker_open: AtomicI64::new(0),
        near_entries: AtomicI64::new(0),
    };
    meter
        .i64_observable_gauge("write_behind.backlog")
        .with_description("Queued writes not yet applied (last sample)")
        .with_callback(|observer| observer.observe(METRICS.backlog.load(Ordering::Relaxed), &[]))
        .build();
    meter
        .i64_observable_gauge("redis.breaker.open")
        .with_description("1 while calls to Redis fail fast after a failure")
        .with_callback(|observer| observer.observe(METRICS.breaker_open.load(Ordering::Relaxed), &[]))
        .build();
    meter
        .i64_observable_gauge("cache.near.entries")
        .with_description("Entries held by the near cache (last sample)")
        .with_callback(|observer| observer.observe(METRICS.near_entries.load(Ordering::Relaxed), &[]))
        .build();
    metrics
});

/// Functions whose requests `cache.requests` counts, by name; any other is counted as `other`.
const COUNTED_FUNCTIONS: [&str; 5] = ["CacheAside", "RefreshAheadRead", "WriteThrough", "WriteBehind", "other"];
/// What the cache did (`x-cache`); anything else is counted as `other`.
const OUTCOMES: [&str; 6] = ["hit", "miss", "stale", "bypass", "updated", "other"];
/// The tier that answered a hit, if the outcome has one.
const TIERS: [Option<&str>; 3] = [None, Some("l1"), Some("l2")];

/// `cache.requests`, counted in one atomic per (function, outcome, tier) and read by the exporters
/// through an observable counter: this runs on every hit, where an attribute-set lookup in the
/// SDK (hashing, a lock, an allocated attribute list) cost several times the near-cache read itself.
struct CacheRequestCounts {
    cells: [AtomicU64; CELLS],
}

const CELLS: usize = COUNTED_FUNCTIONS.len() * OUTCOMES.len() * TIERS.len();

static CACHE_REQUESTS: CacheRequestCounts = CacheRequestCounts::new();

impl CacheRequestCounts {
    const fn new() -> Self {
        Self { cells: [const { AtomicU64::new(0) }; CELLS] }
    }

    fn cell(function: &str, outcome: &str, tier: Option<&str>) -> usize {
        let position = |names: &[&str], name: &str| names.iter().position(|n| *n == name).unwrap_or(names.len() - 1);
        let tier = TIERS.iter().position(|t| *t == tier).unwrap_or(0);
        (position(&COUNTED_FUNCTIONS, function) * OUTCOMES.len() + position(&OUTCOMES, outcome)) * TIERS.len() + tier
    }

    fn add(&self, function: &str, outcome: &str, tier: Option<&str>) {
        self.cells[Self::cell(function, outcome, tier)].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls `observe` with each count that is not zero and its attributes.
    fn observe(&self, mut observe: impl FnMut(u64, &[KeyValue])) {
        for (f, function) in COUNTED_FUNCTIONS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                for (t, tier) in TIERS.iter().enumerate() {
                    let n = self.cells[(f * OUTCOMES.len() + o) * TIERS.len() + t].load(Ordering::Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let mut attributes = vec![KeyValue::new("function", *function), KeyValue::new("outcome", *outcome)];
                    if let Some(tier) = tier {
                        attributes.push(KeyValue::new("tier", *tier));
                    }
                    observe(n, &attributes);
                }
            }
        }
    }
}

/// The process's instruments.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Records a cache read or write of `function` with `outcome` (and the tier of a hit).
    pub fn cache_request(&self, function: &'static str, outcome: &str, tier: Option<&'static str>) {
        CACHE_REQUESTS.add(function, outcome, tier);
    }

    /// Records one invocation of `function` answered with `status` after `took`.
    pub fn request(&self, function: &'static str, status: u16, took: Duration) {
        self.request_duration.record(
            took.as_secs_f64(),
            &[KeyValue::new("http.route", function), KeyValue::new("http.response.status_code", i64::from(status))],
        );
    }

    /// Records a Redis round trip or store call.
    pub fn db_call(&self, system: &'static str, operation: &'static str, took: Duration, error: Option<&'static str>) {
        // On the stack: this runs on every Redis round trip.
        let system = KeyValue::new("db.system.name", system);
        let operation = KeyValue::new("db.operation.name", operation);
        match error {
            None => self.db_duration.record(took.as_secs_f64(), &[system, operation]),
            Some(error) => {
                self.db_duration.record(took.as_secs_f64(), &[system, operation, KeyValue::new("error.type", error)])
            }
        }
    }

    /// Records `n` queued writes with `outcome`.
    pub fn write_behind(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.write_behind_events.add(n, &[KeyValue::new("outcome", outcome)]);
        }
    }

    /// Records a refresh-ahead refresh.
    pub fn refresh(&self, trigger: &'static str, outcome: &'static str) {
        self.refreshes.add(1, &[KeyValue::new("trigger", trigger), KeyValue::new("outcome", outcome)]);
    }

    /// Records an invalidation.
    pub fn invalidation(&self, scope: &'static str, outcome: &'static str) {
        self.invalidations.add(1, &[KeyValue::new("scope", scope), KeyValue::new("outcome", outcome)]);
    }

    /// Samples the write-behind backlog.
    pub fn set_backlog(&self, queued: u64) {
        self.backlog.store(i64::try_from(queued).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Samples the breaker.
    pub fn set_breaker_open(&self, open: bool) {
        self.breaker_open.store(i64::from(open), Ordering::Relaxed);
    }

    /// Samples the near cache's size.
    pub fn set_near_entries(&self, entries: u64) {
        self.near_entries.store(i64::try_from(entries).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_requests_are_counted_per_function_outcome_and_tier() {
        let counts = CacheRequestCounts::new();
        counts.add("CacheAside", "hit", Some("l1"));
        counts.add("CacheAside", "hit", Some("l1"));
        counts.add("CacheAside", "hit", Some("l2"));
        counts.add("WriteThrough", "updated", None);
        counts.add("SomethingNew", "surprise", None);
        let mut seen = Vec::new();
        counts.observe(|n, attributes| {
            let text: Vec<String> = attributes.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
            seen.push((text.join(","), n));
        });
        seen.sort();
        assert_eq!(
            seen,
            [
                ("function=CacheAside,outcome=hit,tier=l1".to_string(), 2),
                ("function=CacheAside,outcome=hit,tier=l2".to_string(), 1),
                ("function=WriteThrough,outcome=updated".to_string(), 1),
                ("function=other,outcome=other".to_string(), 1),
            ]
        );
    }
}
