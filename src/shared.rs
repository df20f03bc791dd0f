//! What every loop of the controller process shares: one kube client, the label keys, one metrics registry,
//! one Event recorder, the leadership, the health state, and the Node index. Built once by `run.rs` and
//! handed to each loop as `Arc<Shared>`; each loop adds only its own options.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::FIELD_MANAGER;
use crate::core::labels::LabelKeys;
use crate::events::{api_error_category, truncate_note};
use crate::health::Health;
use crate::index::NodesSynced;
use crate::indexed_node::IndexedNode;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::node_info::{NodeFacts, node_facts};
use crate::watches::InitialList;

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
    pub recorder: Recorder,
    /// `--initial-list`: how every watch gets its initial state.
    pub initial_list: InitialList,
}

/// The Event recorder of this process: reports as the controller, and as the pod when its name is known.
pub fn recorder(client: &Client, pod_name: Option<String>) -> Recorder {
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: pod_name,
    };
    Recorder::new(client.clone(), reporter)
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

    /// Publishes an Event when this replica may write; returns whether it was written. A failure is logged
    /// and counted under `controller` with the API error's category, never fatal: what the Event reports on
    /// stands without it.
    pub async fn publish(
        &self,
        controller: &'static str,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> bool {
        if !self.may_write() {
            return false;
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate_note(note)),
            action: action.to_owned(),
            secondary: None,
        };
        let result = self.recorder.publish(&event, reference).await;
        if let Err(err) = &result {
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
