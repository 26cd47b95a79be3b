//! Prometheus metrics for the whole process: runs and steps by status and outcome, step
//! durations, deploys, component compiles and cache loads. The instance gauges (live
//! instances, pool capacity) are read from the sandbox when scraped. Served by the API at
//! `GET /metrics`.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::LazyLock;

/// Every Braid metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub runs: IntCounterVec,
    pub steps: IntCounterVec,
    pub step_seconds: HistogramVec,
    pub deploys: IntCounterVec,
    pub compiles: IntCounterVec,
    pub units: IntCounterVec,
    pub live_instances: IntGauge,
    pub instance_capacity: IntGauge,
    pub pooling: IntGauge,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let runs =
        IntCounterVec::new(Opts::new("braid_runs_total", "Finished workflow runs by status"), &["status"]).unwrap();
    let steps = IntCounterVec::new(
        Opts::new("braid_steps_total", "Finished step executions by type, status and sandbox outcome"),
        &["step_type", "status", "outcome"],
    )
    .unwrap();
    let step_seconds = HistogramVec::new(
        HistogramOpts::new("braid_step_duration_seconds", "Step execution wall time").buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]),
        &["step_type"],
    )
    .unwrap();
    let deploys = IntCounterVec::new(
        Opts::new("braid_deploys_total", "Deploy requests by kind (agent, workflow) and result"),
        &["kind", "result"],
    )
    .unwrap();
    let compiles = IntCounterVec::new(
        Opts::new(
            "braid_component_loads_total",
            "Agent components made ready, by how: compiled or precompiled (from the cache)",
        ),
        &["how"],
    )
    .unwrap();
    let units = IntCounterVec::new(
        Opts::new(
            "braid_units_total",
            "Units of fan-outs (branches, map items) this host offered to other hosts, or took from them",
        ),
        &["direction"],
    )
    .unwrap();
    for direction in ["offered", "taken"] {
        units.with_label_values(&[direction]);
    }
    let live_instances = IntGauge::new("braid_live_instances", "Agent instances alive right now").unwrap();
    let instance_capacity =
        IntGauge::new("braid_instance_capacity", "Most instances alive at once (the pool size)").unwrap();
    let pooling = IntGauge::new("braid_pooling_allocator", "1 when instances come from the pooling allocator").unwrap();
    for collector in [
        Box::new(runs.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(steps.clone()),
        Box::new(step_seconds.clone()),
        Box::new(deploys.clone()),
        Box::new(compiles.clone()),
        Box::new(units.clone()),
        Box::new(live_instances.clone()),
        Box::new(instance_capacity.clone()),
        Box::new(pooling.clone()),
    ] {
        registry.register(collector).unwrap();
    }
    Metrics {
        registry,
        runs,
        steps,
        step_seconds,
        deploys,
        compiles,
        units,
        live_instances,
        instance_capacity,
        pooling,
    }
});

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}
