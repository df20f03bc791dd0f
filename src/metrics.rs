//! Prometheus metrics. Every name starts with `osbuild_`; label values come from small static sets (error
//! categories, resources) or from values bounded by the Windows builds present in the cluster (osbuild,
//! release), never from object names.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub const NAMESPACE: &str = "osbuild";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub windows_nodes: IntGaugeVec,
    pub nodes_unlabelled: IntGaugeVec,
    pub nodes_in_conflict: IntGauge,
    pub label_writes: IntCounter,
    pub label_conflicts: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub watch_errors: IntCounterVec,
    pub watch_up: IntGaugeVec,
    pub pod_os_mismatch: IntGaugeVec,
    pub pod_os_mismatch_detections: IntCounterVec,
    pub leader: IntGauge,
}

/// Why a Windows node has no osbuild label: the `reason` of `osbuild_nodes_unlabelled`.
pub const UNLABELLED_REASONS: [&str; 2] = ["unparseable", "revision_unknown"];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let metrics = Self {
            windows_nodes: IntGaugeVec::new(
                opts(
                    "windows_nodes",
                    "Windows nodes seen, by osbuild label value and release id (empty when unknown).",
                ),
                &["osbuild", "release"],
            )?,
            nodes_unlabelled: IntGaugeVec::new(
                opts(
                    "nodes_unlabelled",
                    "Windows nodes that get no osbuild label, by reason (unparseable kernelVersion, revision unknown).",
                ),
                &["reason"],
            )?,
            nodes_in_conflict: IntGauge::with_opts(opts(
                "nodes_label_conflict",
                "Nodes whose labels another field manager owns with other values (not forced).",
            ))?,
            label_writes: IntCounter::with_opts(opts(
                "label_writes_total",
                "Server-side apply requests that changed or set node labels.",
            ))?,
            label_conflicts: IntCounter::with_opts(opts(
                "label_conflicts_total",
                "Label applies refused because another field manager owns a label.",
            ))?,
            reconcile_errors: IntCounterVec::new(
                opts(
                    "reconcile_errors_total",
                    "Failed reconciles, by error category.",
                ),
                &["category"],
            )?,
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new("reconcile_duration_seconds", "Time to reconcile one node.")
                    .namespace(NAMESPACE)
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
            )?,
            watch_errors: IntCounterVec::new(
                opts(
                    "watch_errors_total",
                    "Errors from watches, by resource (the watch retries with backoff).",
                ),
                &["resource"],
            )?,
            watch_up: IntGaugeVec::new(
                opts(
                    "watch_up",
                    "1 when the watch of a resource has synced and its last attempt succeeded.",
                ),
                &["resource"],
            )?,
            pod_os_mismatch: IntGaugeVec::new(
                opts(
                    "pod_os_mismatch",
                    "1 while a pod's container (or sandbox) fails with the Windows OS-version mismatch; the series goes away on recovery.",
                ),
                &["namespace", "pod", "container", "node", "osbuild"],
            )?,
            pod_os_mismatch_detections: IntCounterVec::new(
                opts(
                    "pod_os_mismatch_detections_total",
                    "OS-version mismatch failure episodes detected, by namespace.",
                ),
                &["namespace"],
            )?,
            leader: IntGauge::with_opts(opts(
                "leader",
                "1 when this replica is the leader (always 1 without --leader-elect): only the leader writes.",
            ))?,
            registry,
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.windows_nodes.clone()))?;
        r.register(Box::new(metrics.nodes_unlabelled.clone()))?;
        r.register(Box::new(metrics.nodes_in_conflict.clone()))?;
        r.register(Box::new(metrics.label_writes.clone()))?;
        r.register(Box::new(metrics.label_conflicts.clone()))?;
        r.register(Box::new(metrics.reconcile_errors.clone()))?;
        r.register(Box::new(metrics.reconcile_duration.clone()))?;
        r.register(Box::new(metrics.watch_errors.clone()))?;
        r.register(Box::new(metrics.watch_up.clone()))?;
        r.register(Box::new(metrics.pod_os_mismatch.clone()))?;
        r.register(Box::new(metrics.pod_os_mismatch_detections.clone()))?;
        r.register(Box::new(metrics.leader.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                NAMESPACE,
            ),
        ))?;
        for reason in UNLABELLED_REASONS {
            metrics.nodes_unlabelled.with_label_values(&[reason]).set(0);
        }
        Ok(metrics)
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}
