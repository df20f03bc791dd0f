//! The registry reader's metrics, computed at scrape time from its own counters and what it holds: one
//! reader per process (detector, placement, audit), so they are registered whatever loops run.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Opts};

use super::Registry;
use crate::metrics::{ComputedGauge, NAMESPACE};

pub struct RegistryCollector {
    registry: Arc<Registry>,
    cache_hits: IntCounter,
    resolutions: IntCounter,
    cache_entries: ComputedGauge,
    clients: ComputedGauge,
}

impl RegistryCollector {
    pub fn new(registry: Arc<Registry>) -> prometheus::Result<Self> {
        let counter_opts = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        };
        Ok(Self {
            registry,
            cache_hits: counter_opts(
                "registry_cache_hits_total",
                "Image reads answered from the registry cache.",
            )?,
            resolutions: counter_opts(
                "registry_resolutions_total",
                "Image reads that went to a registry (cache misses and imagePullPolicy: Always), successful or not.",
            )?,
            cache_entries: ComputedGauge::new(
                "registry_cache_entries",
                "Answers in the registry cache (by reference and credential, and by digest).",
                &[],
            )?,
            clients: ComputedGauge::new(
                "registry_clients",
                "Registry HTTP clients kept, one per credential in use, each with its connections.",
                &[],
            )?,
        })
    }
}

impl Collector for RegistryCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut desc = self.cache_hits.desc();
        desc.extend(self.resolutions.desc());
        desc.extend(self.cache_entries.desc());
        desc.extend(self.clients.desc());
        desc
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.registry.stats();
        let mut families = Vec::new();
        // Fresh counters each scrape, set to the registry's own totals (monotonic there).
        for (counter, value) in [
            (&self.cache_hits, stats.cache_hits),
            (&self.resolutions, stats.resolutions),
        ] {
            counter.reset();
            counter.inc_by(value);
            families.extend(counter.collect());
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        families.extend(
            self.cache_entries
                .family([(vec![], count(stats.cache_entries))]),
        );
        families.extend(self.clients.family([(vec![], count(stats.clients))]));
        families
    }
}
