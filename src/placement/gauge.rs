//! The placement metric computed at scrape time: pods gated longer than the deadline (from the gated pods
//! the watch has seen, so it cannot drift). The registry's metrics are its own ([`crate::registry`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::metrics::ComputedGauge;

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

pub struct PlacementCollector {
    gated: GatedPods,
    /// `--placement-deadline`.
    deadline: Duration,
    too_long: ComputedGauge,
}

impl PlacementCollector {
    pub fn new(gated: GatedPods, deadline: Duration) -> prometheus::Result<Self> {
        Ok(Self {
            gated,
            deadline,
            too_long: ComputedGauge::new(
                "pods_gated_too_long",
                "Pods still carrying the osbuild-controller.io/image-os scheduling gate longer than --placement-deadline.",
                &[],
            )?,
        })
    }
}

impl Collector for PlacementCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.too_long.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let late = self.gated.older_than(self.deadline, SystemTime::now());
        self.too_long
            .family([(vec![], i64::try_from(late).unwrap_or(i64::MAX))])
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
