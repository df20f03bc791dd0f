//! What every loop of the controller process shares: one kube client, the label keys, one metrics registry,
//! the Event reporter, the leadership, the health state, the Node index and the image reader. Built once by
//! `run.rs` and handed to each loop as `Arc<Shared>`; each loop adds only its own options.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};

use crate::FIELD_MANAGER;
use crate::core::labels::LabelKeys;
use crate::events::{api_error_category, one_off_event, truncate_note};
use crate::health::Health;
use crate::index::NodesSynced;
use crate::indexed_node::IndexedNode;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::node_info::{NodeFacts, node_facts};
use crate::registry::Registry;
use crate::watches::InitialList;

/// Whether an Event may be published again about the same object (see `Shared::publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeats {
    Series,
    Never,
}

pub struct Shared {
    pub client: Client,
    pub keys: LabelKeys,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// Only the leader writes; every replica watches, computes and exports its view.
    pub leadership: Arc<Leadership>,
    /// `--dry-run`: compute and log every change, write nothing.
    pub dry_run: bool,
    /// The Node index (compact nodes), fed by the one Node watch.
    pub nodes: Store<IndexedNode>,
    /// Becomes true once the Node index has listed every node.
    pub nodes_synced: NodesSynced,
    /// Events that repeat (a node's warning, every reconcile until fixed): kube-runtime's Recorder counts a
    /// repeat within 6 minutes as a series of the first Event.
    pub recorder: Recorder,
    /// Who reports Events that happen once (`Repeats::Never`).
    pub reporter: Reporter,
    /// `--initial-list`: how every watch gets its initial state.
    pub initial_list: InitialList,
    /// The one image reader of the process (detector, placement, audit): one answer cache, one client per
    /// credential. Its upkeep ([`crate::registry::upkeep`]) drops what expired, and everything when this
    /// replica stops leading.
    pub registry: Arc<Registry>,
}

/// Who reports this process's Events: the controller, and the pod when its name is known.
pub fn reporter(pod_name: Option<String>) -> Reporter {
    Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: pod_name,
    }
}

impl Shared {
    /// Whether this replica may write now: the leader, and not a dry run.
    pub fn may_write(&self) -> bool {
        !self.dry_run && self.leadership.is_leader()
    }

    /// The index's view of one node.
    pub fn node_facts(&self, node: &str) -> Option<NodeFacts> {
        self.nodes
            .get(&ObjectRef::new(node))
            .map(|n| node_facts(&*n))
    }

    /// Publishes `event` about `reference` when this replica may write; returns whether it was written.
    /// An Event that repeats (a node's warning, every reconcile until fixed) goes through kube-runtime's
    /// Recorder, which patches the first Event's series for a repeat within 6 minutes; one that happens once
    /// (a pod's mismatch episode, a pod placed) is created whole and nothing is remembered (the Recorder would
    /// keep each one 6 minutes to merge repeats that never come: ~0.7 MB on a busy leader).
    pub async fn publish(
        &self,
        controller: &'static str,
        reference: &ObjectReference,
        mut event: Event,
        repeats: Repeats,
    ) -> bool {
        if !self.may_write() {
            return false;
        }
        event.note = event.note.map(truncate_note);
        let result = match repeats {
            Repeats::Series => self.recorder.publish(&event, reference).await,
            Repeats::Never => {
                let namespace = reference.namespace.as_deref().unwrap_or("default");
                Api::<K8sEvent>::namespaced(self.client.clone(), namespace)
                    .create(
                        &PostParams::default(),
                        &one_off_event(&self.reporter, reference, &event, Timestamp::now()),
                    )
                    .await
                    .map(|_| ())
            }
        };
        self.published(controller, reference, &event.reason, &result)
    }

    /// Counts and logs a failed publish under `controller` with the API error's category, never fatal: what
    /// the Event reports on stands without it.
    fn published(
        &self,
        controller: &'static str,
        reference: &ObjectReference,
        reason: &str,
        result: &Result<(), kube::Error>,
    ) -> bool {
        if let Err(err) = result {
            let category = api_error_category(err);
            self.metrics.api_error(controller, category);
            tracing::warn!(
                kind = reference.kind.as_deref().unwrap_or_default(),
                name = reference.name.as_deref().unwrap_or_default(),
                reason,
                category,
                error = %err,
                "cannot publish event"
            );
        }
        result.is_ok()
    }
}
