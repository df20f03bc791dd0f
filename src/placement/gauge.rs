//! The placement metrics computed at scrape time: pods gated longer than the deadline (from the gated pods
//! the watch has seen, so they cannot drift), and the registry cache's counters.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Opts};

use crate::metrics::{ComputedGauge, NAMESPACE};
use crate::registry::RegistryStats;

/// Pods that carry our gate now: uid → creation time. Written by the watch, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct GatedPods(Arc<Mutex<HashMap<String, SystemTime>>>);

impl GatedPods {
    pub fn insert(&self, uid: &str, created: SystemTime) {
        self.lock().insert(uid.to_owned(), created);
    }

    pub fn remove(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// After a relist: keep only the pods it listed as gated.
    pub fn retain(&self, listed: &HashSet<String>) {
        self.lock().retain(|uid, _| listed.contains(uid));
    }

    /// How many have been gated for longer than `deadline` at `now`.
    pub fn older_than(&self, deadline: Duration, now: SystemTime) -> usize {
        self.lock()
            .values()
            .filter(|created| now.duration_since(**created).unwrap_or_default() > deadline)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SystemTime>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the collector reads from the loop.
pub trait Deadline: Send + Sync {
    fn deadline(&self) -> Duration;
    fn registry_stats(&self) -> RegistryStats;
}

pub struct PlacementCollector {
    gated: GatedPods,
    source: Arc<dyn Deadline>,
    too_long: ComputedGauge,
    cache_hits: IntCounter,
    resolutions: IntCounter,
}

impl PlacementCollector {
    pub fn new(gated: GatedPods, source: Arc<dyn Deadline>) -> prometheus::Result<Self> {
        let counter_opts = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        };
        Ok(Self {
            gated,
            source,
            too_long: ComputedGauge::new(
                "pods_gated_too_long",
                "Pods still carrying the osbuild-controller.io/image-os scheduling gate longer than --placement-deadline.",
                &[],
            )?,
            cache_hits: counter_opts(
                "registry_cache_hits_total",
                "Image reads answered from the registry cache.",
            )?,
            resolutions: counter_opts(
                "registry_resolutions_total",
                "Image reads that went to a registry (cache misses and imagePullPolicy: Always), successful or not.",
            )?,
        })
    }
}

impl Collector for PlacementCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut desc = self.too_long.desc();
        desc.extend(self.cache_hits.desc());
        desc.extend(self.resolutions.desc());
        desc
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let late = self
            .gated
            .older_than(self.source.deadline(), SystemTime::now());
        let mut families = self
            .too_long
            .family([(vec![], i64::try_from(late).unwrap_or(i64::MAX))]);
        let stats = self.source.registry_stats();
        // Fresh counters each scrape, set to the registry's own totals (monotonic there).
        for (counter, value) in [
            (&self.cache_hits, stats.cache_hits),
            (&self.resolutions, stats.resolutions),
        ] {
            counter.reset();
            counter.inc_by(value);
            families.extend(counter.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_pods_gated_longer_than_the_deadline() {
        let gated = GatedPods::default();
        let now = SystemTime::now();
        gated.insert("old", now - Duration::from_secs(60));
        gated.insert("new", now - Duration::from_secs(5));
        assert_eq!(gated.older_than(Duration::from_secs(30), now), 1);
        gated.remove("old");
        assert_eq!(gated.older_than(Duration::from_secs(30), now), 0);
        gated.insert("old", now - Duration::from_secs(60));
        gated.retain(&HashSet::from(["new".to_owned()]));
        assert_eq!(gated.older_than(Duration::from_secs(1), now), 1);
    }
}
