//! Prometheus metrics. Every name starts with `osbuild_`; label values come from small static sets (error
//! categories, resources, controllers) or from values bounded by the Windows builds present in the cluster
//! (osbuild, release), never from object names (the per-pod mismatch gauge excepted: one series per
//! failing container, gone on recovery).
//!
//! Counters and histograms are updated where things happen. Gauges that describe the caches (nodes by
//! build, unlabelled nodes, conflicts) are not kept here at all: a [`prometheus::core::Collector`] computes
//! them from the cache at scrape time (`nodes::inventory`), so they can neither drift nor double-count.

use prometheus::core::Desc;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub const NAMESPACE: &str = "osbuild";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub label_writes: IntCounter,
    pub label_conflicts: IntCounter,
    /// Failed API calls, by the loop that made them and a static category.
    pub errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub watch_errors: IntCounterVec,
    pub watch_up: IntGaugeVec,
    pub pod_os_mismatch: IntGaugeVec,
    pub pod_os_mismatch_detections: IntCounterVec,
    /// From when a failure became visible in the pod's status (or its sandbox Event) to the controller
    /// flagging it; see `pods::detect::visible_since`.
    pub pod_os_mismatch_detection_latency: Histogram,
    /// Gated pods released by the placement loop, by outcome.
    pub placements: IntCounterVec,
    /// Image reads the placement loop asked for (cache hits included), by outcome: `ok` or the error category.
    pub image_resolutions: IntCounterVec,
    /// From pod creation (when the admission policy gated it) to the patch that released it.
    pub gate_to_placed: Histogram,
    /// Each manifest or blob request to a registry.
    pub registry_request_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let metrics = Self {
            label_writes: IntCounter::with_opts(opts(
                "label_writes_total",
                "Server-side apply requests that changed or set node labels.",
            ))?,
            label_conflicts: IntCounter::with_opts(opts(
                "label_conflicts_total",
                "Label applies refused because another field manager owns a label.",
            ))?,
            errors: IntCounterVec::new(
                opts(
                    "reconcile_errors_total",
                    "Failed API calls (label applies, Events, annotations, reads), by controller and error category.",
                ),
                &["controller", "category"],
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
                    "Errors from watches, by resource and error category (the watch retries with backoff).",
                ),
                &["resource", "category"],
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
                &["namespace", "pod", "container", "node", "osbuild", "variant"],
            )?,
            pod_os_mismatch_detections: IntCounterVec::new(
                opts(
                    "pod_os_mismatch_detections_total",
                    "OS-version mismatch failure episodes detected, by namespace and variant (the wording of the failure).",
                ),
                &["namespace", "variant"],
            )?,
            pod_os_mismatch_detection_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "pod_os_mismatch_detection_latency_seconds",
                    "Time from when a failure became visible (the failed container's finishedAt, else the ContainersReady condition's lastTransitionTime, or the sandbox Event's time) to the controller flagging it. Episodes found in a (re-)list are not timed.",
                )
                .namespace(NAMESPACE)
                // Whole seconds: the API server keeps the start times to the second.
                .buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                ]),
            )?,
            placements: IntCounterVec::new(
                opts(
                    "placements_total",
                    "Gated pods released by the placement loop, by outcome (placed, no-compatible-node, not-windows, image-os-unknown).",
                ),
                &["outcome"],
            )?,
            image_resolutions: IntCounterVec::new(
                opts(
                    "image_resolutions_total",
                    "Images of gated pods read (from the cache or the registry), by outcome: ok or the registry error category.",
                ),
                &["outcome"],
            )?,
            gate_to_placed: Histogram::with_opts(
                HistogramOpts::new(
                    "gate_to_placed_seconds",
                    "Time from a gated pod's creation to the patch that released it.",
                )
                .namespace(NAMESPACE)
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ]),
            )?,
            registry_request_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "registry_request_duration_seconds",
                    "Duration of one manifest or blob request to a registry (the auth handshake included).",
                )
                .namespace(NAMESPACE)
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            registry,
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.label_writes.clone()))?;
        r.register(Box::new(metrics.label_conflicts.clone()))?;
        r.register(Box::new(metrics.errors.clone()))?;
        r.register(Box::new(metrics.reconcile_duration.clone()))?;
        r.register(Box::new(metrics.watch_errors.clone()))?;
        r.register(Box::new(metrics.watch_up.clone()))?;
        r.register(Box::new(metrics.pod_os_mismatch.clone()))?;
        r.register(Box::new(metrics.pod_os_mismatch_detections.clone()))?;
        r.register(Box::new(metrics.pod_os_mismatch_detection_latency.clone()))?;
        r.register(Box::new(metrics.placements.clone()))?;
        r.register(Box::new(metrics.image_resolutions.clone()))?;
        r.register(Box::new(metrics.gate_to_placed.clone()))?;
        r.register(Box::new(metrics.registry_request_duration.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id().cast_signed(),
                NAMESPACE,
            ),
        ))?;
        Ok(metrics)
    }

    /// Adds a collector that computes its metrics at scrape time.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// Counts a failed API call of `controller` (one of the loop names) by its static category.
    pub fn api_error(&self, controller: &str, category: &str) {
        self.errors.with_label_values(&[controller, category]).inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

/// A gauge family whose values are computed at scrape time, for a [`prometheus::core::Collector`]: each
/// scrape builds the family afresh from the caller's values, so concurrent scrapes cannot interfere and
/// series of objects that are gone simply vanish.
pub struct ComputedGauge {
    opts: Opts,
    labels: &'static [&'static str],
    prototype: IntGaugeVec,
}

impl ComputedGauge {
    pub fn new(
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> prometheus::Result<Self> {
        let opts = Opts::new(name, help).namespace(NAMESPACE);
        Ok(Self {
            prototype: IntGaugeVec::new(opts.clone(), labels)?,
            opts,
            labels,
        })
    }

    pub fn desc(&self) -> Vec<&Desc> {
        use prometheus::core::Collector;
        self.prototype.desc()
    }

    /// The family with exactly these series: (label values in the order given to `new`, value).
    pub fn family<'a>(
        &self,
        series: impl IntoIterator<Item = (Vec<&'a str>, i64)>,
    ) -> Vec<MetricFamily> {
        use prometheus::core::Collector;
        // Cannot fail: the same options were accepted by `new`.
        let Ok(fresh) = IntGaugeVec::new(self.opts.clone(), self.labels) else {
            return Vec::new();
        };
        for (labels, value) in series {
            if let Ok(gauge) = fresh.get_metric_with_label_values(&labels) {
                gauge.set(value);
            }
        }
        fresh.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mismatch metrics carry the variant; the detection latency is a histogram of whole-second buckets.
    #[test]
    fn mismatch_metrics_carry_the_variant_and_the_latency_buckets() {
        let metrics = Metrics::new().unwrap();
        metrics
            .pod_os_mismatch
            .with_label_values(&["shop", "web", "app", "win-1", "17763", "containerd"])
            .set(1);
        metrics
            .pod_os_mismatch_detections
            .with_label_values(&["shop", "containerd"])
            .inc();
        metrics.pod_os_mismatch_detection_latency.observe(3.0);
        let text = metrics.encode().unwrap();
        for line in [
            r#"osbuild_pod_os_mismatch{container="app",namespace="shop",node="win-1",osbuild="17763",pod="web",variant="containerd"} 1"#,
            r#"osbuild_pod_os_mismatch_detections_total{namespace="shop",variant="containerd"} 1"#,
            r#"osbuild_pod_os_mismatch_detection_latency_seconds_bucket{le="2"} 0"#,
            r#"osbuild_pod_os_mismatch_detection_latency_seconds_bucket{le="5"} 1"#,
            "osbuild_pod_os_mismatch_detection_latency_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
