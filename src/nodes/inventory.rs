//! The node gauges, computed from the Node index at scrape time (never patched by the loops, so they
//! cannot drift, double-count under concurrent scrapes, or keep nodes that were deleted).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::core::labels::LabelKeys;
use crate::indexed_node::IndexedNode;
use crate::leadership::Leadership;
use crate::metrics::ComputedGauge;
use crate::node_info::NodeInputs;

use super::plan::{NodeState, plan};

/// Nodes whose last label apply hit a conflict. Written by reconciles, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Conflicts(Arc<Mutex<HashSet<String>>>);

impl Conflicts {
    pub fn set(&self, node: &str, conflicted: bool) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if conflicted {
            set.insert(node.to_owned());
        } else {
            set.remove(node);
        }
    }

    fn contains(&self, node: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(node)
    }
}

/// Why a Windows node has no osbuild label: the `reason` of `osbuild_nodes_unlabelled`.
pub const UNLABELLED_REASONS: [&str; 2] = ["unparseable", "revision_unknown"];

/// What the gauges say, computed from a set of nodes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// (osbuild, release) → Windows nodes; empty strings when unknown.
    pub windows: BTreeMap<(String, String), i64>,
    pub unparseable: i64,
    pub revision_unknown: i64,
    pub conflicted: i64,
}

pub fn count<'a, N: NodeInputs + Resource + 'a>(
    nodes: impl IntoIterator<Item = &'a N>,
    keys: &LabelKeys,
    conflicted: impl Fn(&str) -> bool,
) -> Counts {
    let mut counts = Counts::default();
    for node in nodes {
        if conflicted(&node.name_any()) {
            counts.conflicted += 1;
        }
        match plan(node, keys).state {
            NodeState::Labelled {
                osbuild,
                release,
                problem,
            } => {
                if problem.is_some() {
                    counts.revision_unknown += 1;
                }
                *counts
                    .windows
                    .entry((
                        osbuild.unwrap_or_default(),
                        release.unwrap_or("").to_owned(),
                    ))
                    .or_default() += 1;
            }
            NodeState::Unparseable { .. } => counts.unparseable += 1,
            NodeState::NotWindows | NodeState::OptedOut | NodeState::NotReported => {}
        }
    }
    counts
}

pub struct Inventory {
    store: Store<IndexedNode>,
    keys: LabelKeys,
    conflicts: Conflicts,
    leadership: Arc<Leadership>,
    windows_nodes: ComputedGauge,
    unlabelled: ComputedGauge,
    in_conflict: ComputedGauge,
}

impl Inventory {
    pub fn new(
        store: Store<IndexedNode>,
        keys: LabelKeys,
        conflicts: Conflicts,
        leadership: Arc<Leadership>,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            store,
            keys,
            conflicts,
            leadership,
            windows_nodes: ComputedGauge::new(
                "windows_nodes",
                "Windows nodes seen, by osbuild label value and release id (empty when unknown).",
                &["osbuild", "release"],
            )?,
            unlabelled: ComputedGauge::new(
                "nodes_unlabelled",
                "Windows nodes that get no osbuild label, by reason (unparseable kernelVersion, revision unknown).",
                &["reason"],
            )?,
            in_conflict: ComputedGauge::new(
                "nodes_label_conflict",
                "Nodes whose labels another field manager owns with other values (not forced); 0 on followers.",
                &[],
            )?,
        })
    }
}

impl Collector for Inventory {
    fn desc(&self) -> Vec<&Desc> {
        [&self.windows_nodes, &self.unlabelled, &self.in_conflict]
            .into_iter()
            .flat_map(ComputedGauge::desc)
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let nodes = self.store.state();
        let counts = count(nodes.iter().map(AsRef::as_ref), &self.keys, |name| {
            self.conflicts.contains(name)
        });
        // Conflicts are the writer's business: a follower has none to report.
        let conflicted = if self.leadership.is_leader() {
            counts.conflicted
        } else {
            0
        };
        let mut families = self.windows_nodes.family(
            counts
                .windows
                .iter()
                .map(|((osbuild, release), n)| (vec![osbuild.as_str(), release.as_str()], *n)),
        );
        families.extend(self.unlabelled.family([
            (vec![UNLABELLED_REASONS[0]], counts.unparseable),
            (vec![UNLABELLED_REASONS[1]], counts.revision_unknown),
        ]));
        families.extend(self.in_conflict.family([(vec![], conflicted)]));
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};

    fn node(name: &str, os: &str, kernel: &str) -> Node {
        let mut node = Node {
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo {
                    operating_system: os.into(),
                    kernel_version: kernel.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        node.metadata.name = Some(name.into());
        node
    }

    #[test]
    fn counts_by_build_release_and_reason() {
        let nodes = [
            node("a", "windows", "10.0.17763.3887"),
            node("b", "windows", "10.0.17763.5329"),
            node("c", "windows", "10.0.20348.2227"),
            node("d", "windows", "10.0.14393"),
            node("e", "windows", "6.2.09200.192"),
            node("f", "linux", "5.15.0-1049-azure"),
        ];
        let counts = count(&nodes, &LabelKeys::default(), |n| n == "c" || n == "gone");
        assert_eq!(counts.windows[&("17763".into(), "ltsc2019".into())], 2);
        assert_eq!(counts.windows[&("20348".into(), "ltsc2022".into())], 1);
        assert_eq!(counts.windows[&(String::new(), "ltsc2016".into())], 1);
        assert_eq!((counts.unparseable, counts.revision_unknown), (1, 1));
        assert_eq!(
            counts.conflicted, 1,
            "a deleted node's conflict is not counted"
        );
    }

    #[tokio::test]
    async fn the_collector_reports_the_store_and_forgets_deleted_nodes() {
        use kube::runtime::reflector;
        use kube::runtime::watcher::Event;
        let (reader, mut writer) = reflector::store::<IndexedNode>();
        let conflicts = Conflicts::default();
        conflicts.set("win-1", true);
        let leadership = Leadership::always_leader();
        let inventory =
            Inventory::new(reader, LabelKeys::default(), conflicts.clone(), leadership).unwrap();
        let win1 = IndexedNode::from(&node("win-1", "windows", "10.0.20348.2227"));
        writer.apply_watcher_event(&Event::Apply(win1.clone()));
        let registry = prometheus::Registry::new();
        registry.register(Box::new(inventory)).unwrap();
        let value = |name: &str| -> Option<f64> {
            registry
                .gather()
                .iter()
                .find(|f| f.name() == name)
                .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().value()))
        };
        assert_eq!(value("osbuild_windows_nodes"), Some(1.0));
        assert_eq!(value("osbuild_nodes_label_conflict"), Some(1.0));
        writer.apply_watcher_event(&Event::Delete(win1));
        assert_eq!(
            value("osbuild_windows_nodes"),
            None,
            "the series is gone with the node"
        );
        assert_eq!(value("osbuild_nodes_label_conflict"), Some(0.0));
    }
}
