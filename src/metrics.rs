//! Prometheus metrics and the readiness flags behind `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub endpoint: String,
    /// `delivered`, `retry` (failed, will be retried) or `dead`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub endpoint: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`, `timeout`, `connection` or `other`.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub endpoint: String,
    /// `delivered` (the endpoint resumes) or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub endpoint: String,
    /// `paused` or `resumed`.
    pub change: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RowLabels {
    pub endpoint: String,
    pub status: &'static str,
}

/// Everything the relay reports; shared by all tasks.
pub struct Metrics {
    registry: Registry,
    pub attempts: Family<OutcomeLabels, Counter>,
    pub attempt_seconds: Family<EndpointLabels, Histogram>,
    pub results: Family<ClassLabels, Counter>,
    pub rows: Family<RowLabels, Gauge>,
    pub oldest_pending_seconds: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    pub abandoned: Counter,
    pub taken_over: Counter,
    pub database_up: Gauge,
    pub listener_up: Gauge,
    pub ready: Gauge,
    pub endpoint_paused: Family<EndpointLabels, Gauge>,
    pub probes: Family<ProbeLabels, Counter>,
    pub breaker_changes: Family<ChangeLabels, Counter>,
    db_ok: AtomicBool,
    listener_ok: AtomicBool,
    /// Set once the relay has renewed and taken its share of partitions for
    /// every endpoint: until then it would read nothing.
    owning: AtomicBool,
    /// False when the relay runs without a LISTEN connection (behind a
    /// pooler, or the server refused LISTEN): readiness is the database only.
    listener_wanted: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outbox_relay");
        let attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "attempts",
            "Delivery attempts by endpoint and outcome (delivered, retry, dead)",
            attempts.clone(),
        );
        let attempt_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            // 1 ms to about 33 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "attempt_duration_seconds",
            "Time from sending a request to its outcome",
            attempt_seconds.clone(),
        );
        let results = Family::<ClassLabels, Counter>::default();
        registry.register(
            "attempt_results",
            "Attempts (probes included) by endpoint and result class: 2xx..5xx, timeout, connection, other",
            results.clone(),
        );
        let rows = Family::<RowLabels, Gauge>::default();
        registry.register(
            "outbox_rows",
            "Outbox rows by endpoint and status (pending, in_flight, dead), sampled",
            rows.clone(),
        );
        let oldest_pending_seconds = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "oldest_pending_seconds",
            "How long the most overdue pending row has been due, sampled",
            oldest_pending_seconds.clone(),
        );
        let abandoned = Counter::default();
        registry.register(
            "abandoned_attempts",
            "Attempts abandoned at the shutdown deadline (their events are sent again)",
            abandoned.clone(),
        );
        let taken_over = Counter::default();
        registry.register(
            "partitions_taken_over",
            "Partitions this relay took from a relay whose lease had expired",
            taken_over.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 while the relay's database connection works",
            database_up.clone(),
        );
        let listener_up = Gauge::default();
        registry.register(
            "listener_up",
            "1 while the LISTEN connection is established",
            listener_up.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the relay is ready (/readyz): its database and LISTEN connections work and it has taken its share of partitions",
            ready.clone(),
        );
        let endpoint_paused = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_paused",
            "1 while the endpoint is paused (by the circuit breaker or by hand), as this relay last read it",
            endpoint_paused.clone(),
        );
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "probes",
            "Probes this relay sent to paused endpoints, by outcome (delivered, failed)",
            probes.clone(),
        );
        let breaker_changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "endpoint_state_changes",
            "Endpoints paused or resumed, as this relay saw them change",
            breaker_changes.clone(),
        );
        Metrics {
            registry,
            ready,
            endpoint_paused,
            probes,
            breaker_changes,
            attempts,
            attempt_seconds,
            results,
            rows,
            oldest_pending_seconds,
            abandoned,
            taken_over,
            database_up,
            listener_up,
            db_ok: AtomicBool::new(false),
            listener_ok: AtomicBool::new(false),
            owning: AtomicBool::new(false),
            listener_wanted: AtomicBool::new(true),
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }

    pub fn set_db_ok(&self, ok: bool) {
        if self.db_ok.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("database connection is working");
            } else {
                tracing::warn!("database connection lost; retrying");
            }
        }
        self.database_up.set(i64::from(ok));
        self.ready.set(i64::from(self.ready()));
    }

    pub fn set_listener_ok(&self, ok: bool) {
        self.listener_ok.store(ok, Ordering::Relaxed);
        self.listener_up.set(i64::from(ok));
        self.ready.set(i64::from(self.ready()));
    }

    /// Counts one attempt's result and its duration.
    pub fn observe_attempt(&self, endpoint: &str, attempt: &crate::deliver::Attempt) {
        let endpoint = endpoint.to_string();
        self.results
            .get_or_create(&ClassLabels {
                endpoint: endpoint.clone(),
                class: attempt.class(),
            })
            .inc();
        self.attempt_seconds
            .get_or_create(&EndpointLabels { endpoint })
            .observe(attempt.elapsed.as_secs_f64());
    }

    /// The relay relies on the poll timer alone: readiness no longer waits
    /// for the LISTEN connection.
    pub fn set_no_listener(&self) {
        self.listener_wanted.store(false, Ordering::Relaxed);
        self.ready.set(i64::from(self.ready()));
    }

    /// The first round of partition ownership is done (see [`Metrics::ready`]).
    pub fn set_owning(&self) {
        if !self.owning.swap(true, Ordering::Relaxed) {
            tracing::info!("partitions taken: the relay is ready");
        }
        self.ready.set(i64::from(self.ready()));
    }

    /// Ready: the database answers, the listener (if any) is connected, and
    /// the relay has taken its share of partitions once.
    pub fn ready(&self) -> bool {
        self.db_ok.load(Ordering::Relaxed)
            && self.owning.load(Ordering::Relaxed)
            && (self.listener_ok.load(Ordering::Relaxed)
                || !self.listener_wanted.load(Ordering::Relaxed))
    }
}
