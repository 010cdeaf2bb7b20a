//! The series of backend pools: endpoints up, selections, ejections, failovers, circuit state and
//! transitions, fallbacks and DNS resolutions.
//!
//! Labels are bounded by the configuration and by what DNS returns: `backend` is a configured name,
//! `endpoint` an address (`ip:port`) a backend's URLs resolve to, whose series are removed when the
//! address leaves the pool; `to` and `result` are fixed sets.

use prometheus::{
    register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};

/// The pool series.
pub struct PoolMetrics {
    /// `botbridge_backend_endpoint_up{backend, endpoint}`: 1 while the endpoint can be chosen.
    pub endpoint_up: IntGaugeVec,
    /// `botbridge_backend_selections_total{backend, endpoint}`
    pub selections: IntCounterVec,
    /// `botbridge_backend_ejections_total{backend, endpoint}`
    pub ejections: IntCounterVec,
    /// `botbridge_backend_failovers_total{backend}`: requests moved to another endpoint.
    pub failovers: IntCounterVec,
    /// `botbridge_backend_circuit_open{backend}`: 1 while open or half-open.
    pub circuit_open: IntGaugeVec,
    /// `botbridge_backend_circuit_transitions_total{backend, to}`: `open`, `half_open`, `closed`.
    pub circuit_transitions: IntCounterVec,
    /// `botbridge_backend_fallbacks_total{route, backend}`: answered by the route's fallback
    /// because this backend's circuit was open.
    pub fallbacks: IntCounterVec,
    /// `botbridge_backend_dns_resolutions_total{backend, result}`: `ok`, `error` (the last
    /// addresses were kept).
    pub dns_resolutions: IntCounterVec,
}

/// The states a circuit moves to, as labels.
pub const CIRCUIT_STATES: [&str; 3] = ["open", "half_open", "closed"];

impl PoolMetrics {
    /// Registers the series in the default registry.
    pub fn register() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register_int_counter_vec!(name, help, labels).expect("register pool counter")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register_int_gauge_vec!(name, help, labels).expect("register pool gauge")
        };
        PoolMetrics {
            endpoint_up: gauge(
                "botbridge_backend_endpoint_up",
                "1 while a backend endpoint can be chosen (healthy and not ejected), else 0.",
                &["backend", "endpoint"],
            ),
            selections: counter(
                "botbridge_backend_selections_total",
                "Times an endpoint was chosen for a request (each try counts).",
                &["backend", "endpoint"],
            ),
            ejections: counter(
                "botbridge_backend_ejections_total",
                "Endpoints ejected after consecutive failed exchanges.",
                &["backend", "endpoint"],
            ),
            failovers: counter(
                "botbridge_backend_failovers_total",
                "Requests moved to another endpoint because nothing of them was sent.",
                &["backend"],
            ),
            circuit_open: gauge(
                "botbridge_backend_circuit_open",
                "1 while a backend's circuit is open or half-open, else 0.",
                &["backend"],
            ),
            circuit_transitions: counter(
                "botbridge_backend_circuit_transitions_total",
                "Circuit state changes, by the state entered.",
                &["backend", "to"],
            ),
            fallbacks: counter(
                "botbridge_backend_fallbacks_total",
                "Requests answered by the route's fallback while this backend's circuit was open.",
                &["route", "backend"],
            ),
            dns_resolutions: counter(
                "botbridge_backend_dns_resolutions_total",
                "Resolutions of backend host names, by result (on error the last addresses stay).",
                &["backend", "result"],
            ),
        }
    }

    /// Creates a backend's series (at zero).
    pub fn register_backend(&self, backend: &str) {
        self.failovers.with_label_values(&[backend]);
        self.circuit_open.with_label_values(&[backend]);
        for to in CIRCUIT_STATES {
            self.circuit_transitions.with_label_values(&[backend, to]);
        }
        for result in ["ok", "error"] {
            self.dns_resolutions.with_label_values(&[backend, result]);
        }
    }

    /// An endpoint's handles (creating its series).
    pub fn endpoint(&self, backend: &str, endpoint: &str) -> EndpointMetrics {
        let labels = [backend, endpoint];
        EndpointMetrics {
            up: self.endpoint_up.with_label_values(&labels),
            selections: self.selections.with_label_values(&labels),
            ejections: self.ejections.with_label_values(&labels),
        }
    }

    /// Removes an endpoint's series (it left the pool).
    pub fn remove_endpoint(&self, backend: &str, endpoint: &str) {
        let labels = [backend, endpoint];
        let _ = self.endpoint_up.remove_label_values(&labels);
        let _ = self.selections.remove_label_values(&labels);
        let _ = self.ejections.remove_label_values(&labels);
    }
}

/// One endpoint's series.
pub struct EndpointMetrics {
    pub up: IntGauge,
    pub selections: IntCounter,
    pub ejections: IntCounter,
}
