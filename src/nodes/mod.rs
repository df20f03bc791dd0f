//! The node controller: keeps our labels on every Windows node right, with server-side apply.
//!
//! One reconcile = one plan (pure, see [`plan`]) + at most one apply. The apply sends the complete set of
//! labels we want under field manager [`MANAGER`]; the API server removes labels we applied before and no
//! longer send, and never touches labels of other managers.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};

use crate::core::labels::LabelKeys;
use crate::events::{api_error_category, publish_warning};
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::ownership::applied_label_keys;
use plan::{NodeState, plan};

/// Our field manager for server-side apply, and the controller name on Events.
pub const MANAGER: &str = "osbuild-controller";

/// What every reconcile shares.
pub struct NodeContext {
    pub api: Api<Node>,
    pub keys: LabelKeys,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub force_conflicts: bool,
    pub dry_run: bool,
    /// How often a node is looked at again even when nothing changed: the safety net.
    pub resync: Duration,
    /// Only the leader writes; followers compute and keep their caches warm.
    pub leadership: Arc<Leadership>,
    /// Nodes whose last apply hit a conflict, for the `osbuild_nodes_label_conflict` gauge.
    pub conflicted: Mutex<HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot apply labels to node {node}: {source}")]
    Apply {
        node: String,
        #[source]
        source: kube::Error,
    },
}

impl NodeError {
    /// A static category for the `osbuild_reconcile_errors_total` metric.
    pub fn category(&self) -> &'static str {
        match self {
            NodeError::Apply { source, .. } => api_error_category(source),
        }
    }
}

impl NodeContext {
    /// Drops every remembered conflict (on losing leadership).
    pub fn forget_conflicts(&self) {
        let mut set = self.conflicted.lock().unwrap_or_else(|p| p.into_inner());
        set.clear();
        self.metrics.nodes_in_conflict.set(0);
    }
}

pub async fn reconcile(node: Arc<Node>, ctx: Arc<NodeContext>) -> Result<Action, NodeError> {
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    let name = node.name_any();
    let plan = plan(&node, &ctx.keys);
    let requeue = Action::requeue(ctx.resync);
    if !ctx.leadership.is_leader() {
        // A new leader reconciles every node when it takes over (see run.rs), so nothing is lost here.
        return Ok(requeue);
    }

    if let Some(warning) = plan.warning() {
        tracing::warn!(node = %name, reason = warning.reason, "{}", warning.message);
        publish(&ctx, &node, warning.reason, warning.message).await;
    }
    let Some(desired) = plan.desired else {
        tracing::debug!(node = %name, "kernelVersion not reported yet; waiting");
        return Ok(requeue);
    };
    let owned = applied_label_keys(
        node.metadata.managed_fields.as_deref().unwrap_or_default(),
        MANAGER,
    );
    let current = node.metadata.labels.clone().unwrap_or_default();
    if labels_hold(&current, &desired, &owned) {
        set_conflicted(&ctx, &name, false);
        return Ok(requeue);
    }

    let change = describe_change(&current, &desired, &owned);
    if ctx.dry_run {
        tracing::info!(node = %name, state = ?plan.state, change = %change, "dry run: would apply labels");
        return Ok(requeue);
    }
    let mut params = PatchParams::apply(MANAGER);
    params.force = ctx.force_conflicts;
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": desired },
    });
    match ctx.api.patch(&name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => {
            ctx.metrics.label_writes.inc();
            set_conflicted(&ctx, &name, false);
            tracing::info!(node = %name, change = %change, "applied labels");
            Ok(requeue)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            ctx.metrics.label_conflicts.inc();
            set_conflicted(&ctx, &name, true);
            let message = format!(
                "labels are owned by another field manager with other values, not forced (run with --force-conflicts to take them): {}",
                status.message
            );
            tracing::warn!(node = %name, "{message}");
            publish(&ctx, &node, "LabelConflict", message).await;
            Ok(requeue)
        }
        Err(source) => Err(NodeError::Apply { node: name, source }),
    }
}

pub fn error_policy(node: Arc<Node>, err: &NodeError, ctx: Arc<NodeContext>) -> Action {
    let category = err.category();
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[category])
        .inc();
    tracing::warn!(node = %node.name_any(), category, error = %err, "reconcile failed; retrying");
    // Missing permissions are not fixed by hammering the API server.
    let delay = if matches!(category, "forbidden" | "unauthorized") {
        60
    } else {
        5
    };
    Action::requeue(Duration::from_secs(delay))
}

/// Whether the node already carries exactly our desired labels: every desired value present, and we own
/// no label we no longer want.
pub fn labels_hold(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    owned: &BTreeSet<String>,
) -> bool {
    desired.iter().all(|(k, v)| current.get(k) == Some(v))
        && owned.iter().all(|k| desired.contains_key(k))
}

/// "+key=value ~key=old->new -key" for the log line of a change.
fn describe_change(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    owned: &BTreeSet<String>,
) -> String {
    let mut parts = Vec::new();
    for (k, v) in desired {
        match current.get(k) {
            None => parts.push(format!("+{k}={v}")),
            Some(old) if old != v => parts.push(format!("~{k}={old}->{v}")),
            Some(_) => {}
        }
    }
    parts.extend(
        owned
            .iter()
            .filter(|k| !desired.contains_key(*k))
            .map(|k| format!("-{k}")),
    );
    if parts.is_empty() {
        "take ownership of labels already set".to_owned()
    } else {
        parts.join(" ")
    }
}

fn set_conflicted(ctx: &NodeContext, name: &str, conflicted: bool) {
    let mut set = ctx.conflicted.lock().unwrap_or_else(|p| p.into_inner());
    if conflicted {
        set.insert(name.to_owned());
    } else {
        set.remove(name);
    }
    ctx.metrics.nodes_in_conflict.set(set.len() as i64);
}

async fn publish(ctx: &NodeContext, node: &Node, reason: &str, note: String) {
    if !ctx.dry_run {
        let reference = node.object_ref(&());
        publish_warning(
            &ctx.recorder,
            &ctx.metrics,
            &reference,
            reason,
            "LabelNode",
            note,
        )
        .await;
    }
}

/// Recomputes the node gauges from the store: Windows nodes by osbuild and release, and unlabelled ones by
/// reason. Called before each scrape, so the gauges never drift from the cache.
pub fn refresh_inventory(store: &Store<Node>, keys: &LabelKeys, metrics: &Metrics) {
    metrics.windows_nodes.reset();
    let mut unparseable = 0;
    let mut revision_unknown = 0;
    for node in store.state() {
        match plan(&node, keys).state {
            NodeState::Labelled {
                osbuild,
                release,
                problem,
            } => {
                if problem.is_some() {
                    revision_unknown += 1;
                }
                metrics
                    .windows_nodes
                    .with_label_values(&[osbuild.as_deref().unwrap_or(""), release.unwrap_or("")])
                    .inc();
            }
            NodeState::Unparseable { .. } => unparseable += 1,
            NodeState::NotWindows | NodeState::OptedOut | NodeState::NotReported => {}
        }
    }
    metrics
        .nodes_unlabelled
        .with_label_values(&["unparseable"])
        .set(unparseable);
    metrics
        .nodes_unlabelled
        .with_label_values(&["revision_unknown"])
        .set(revision_unknown);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn hold_requires_values_and_no_stale_ownership() {
        let desired = map(&[("a", "1"), ("b", "2")]);
        assert!(labels_hold(
            &map(&[("a", "1"), ("b", "2"), ("x", "y")]),
            &desired,
            &set(&["a", "b"])
        ));
        assert!(
            !labels_hold(&map(&[("a", "1")]), &desired, &set(&["a"])),
            "b missing"
        );
        assert!(
            !labels_hold(&map(&[("a", "1"), ("b", "3")]), &desired, &set(&["a", "b"])),
            "b wrong"
        );
        assert!(
            !labels_hold(
                &map(&[("a", "1"), ("b", "2"), ("c", "1")]),
                &desired,
                &set(&["a", "b", "c"])
            ),
            "c stale"
        );
        assert!(
            labels_hold(&map(&[("team", "x")]), &BTreeMap::new(), &BTreeSet::new()),
            "nothing wanted, nothing owned"
        );
    }

    #[test]
    fn change_description() {
        let d = describe_change(
            &map(&[("a", "1"), ("c", "9")]),
            &map(&[("a", "2"), ("b", "1")]),
            &set(&["a", "c"]),
        );
        assert_eq!(d, "~a=1->2 +b=1 -c");
    }
}
