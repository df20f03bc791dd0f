//! Prometheus text expositions (the controller's `/metrics`, the API server's), read with a real parser.

use prometheus_parse::{Sample, Value};

/// One parsed scrape.
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// Parses a text exposition; a body that is not one parses as empty (every lookup then says `None`).
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Self(
            prometheus_parse::Scrape::parse(lines).unwrap_or(prometheus_parse::Scrape {
                docs: Default::default(),
                samples: Vec::new(),
            }),
        )
    }

    /// Series named `name` whose labels include every `(key, value)`. Histogram and summary `_sum` and
    /// `_count` series are plain samples under those names.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of the first matching series; `None` when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels).find_map(|s| scalar(&s.value))
    }

    /// The sum over every matching series (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels)
            .filter_map(|s| scalar(&s.value))
            .sum()
    }

    /// The sum over the series of `name` whose labels `keep` accepts (for filters richer than equality).
    pub fn sum_where(&self, name: &str, keep: impl Fn(&prometheus_parse::Labels) -> bool) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name && keep(&s.labels))
            .filter_map(|s| scalar(&s.value))
            .sum()
    }

    /// Every metric family (with a `# HELP` line) whose name starts with `prefix`.
    pub fn families(&self, prefix: &str) -> std::collections::BTreeSet<String> {
        self.0
            .docs
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn scalar(value: &Value) -> Option<f64> {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_series_by_labels_and_sums() {
        let scrape = Scrape::parse(
            "# HELP osbuild_reconcile_errors_total x\n# TYPE osbuild_reconcile_errors_total counter\n\
             osbuild_reconcile_errors_total{controller=\"node-controller\",category=\"forbidden\"} 2\n\
             osbuild_reconcile_errors_total{controller=\"pod-detector\",category=\"forbidden\"} 3\n\
             # TYPE osbuild_reconcile_duration_seconds histogram\n\
             osbuild_reconcile_duration_seconds_bucket{le=\"+Inf\"} 7\n\
             osbuild_reconcile_duration_seconds_sum 0.5\n\
             osbuild_reconcile_duration_seconds_count 7\n",
        );
        let name = "osbuild_reconcile_errors_total";
        assert_eq!(
            scrape.value(name, &[("controller", "pod-detector")]),
            Some(3.0)
        );
        assert_eq!(scrape.sum(name, &[("category", "forbidden")]), 5.0);
        assert_eq!(scrape.value(name, &[("category", "throttled")]), None);
        assert_eq!(
            scrape.value("osbuild_reconcile_duration_seconds_count", &[]),
            Some(7.0)
        );
        let families = scrape.families("osbuild_");
        assert!(families.contains(name), "{families:?}");
        assert!(!families.contains("osbuild_reconcile_duration_seconds_count"));
    }
}
