//! The node controller: keeps our labels on every Windows node right, with server-side apply.
//!
//! One reconcile = one plan (pure, see [`plan`]) + at most one apply. The apply sends the complete set of
//! labels we want under our field manager; the API server removes labels we applied before and no longer
//! send, and never touches labels of other managers. [`inventory`] computes the node gauges at scrape time.

pub mod inventory;
pub mod plan;
pub mod queue;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::FIELD_MANAGER;
use crate::events::api_error_category;
use crate::indexed_node::IndexedNode;
use crate::shared::{Repeats, Shared};
use crate::supervisor::Supervisor;
use inventory::{Conflicts, Inventory};
use plan::plan;
use queue::WorkQueue;

/// The loop's name in liveness and in `osbuild_reconcile_errors_total{controller}`.
pub const CONTROLLER: &str = "node-controller";

/// The node controller's own options.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `--force-conflicts`: take over labels another field manager owns with other values.
    pub force_conflicts: bool,
    /// `--resync-interval`: look at a node again this often even when nothing changed (the safety net).
    pub resync: Duration,
    /// `--concurrency`: nodes reconciled at once.
    pub concurrency: u16,
}

/// What every reconcile shares.
pub struct NodeContext {
    shared: Arc<Shared>,
    /// Nodes as the index decodes them: the apply's answer (a whole Node, ~20 KiB of JSON) is not read, so
    /// it is not built either.
    api: Api<IndexedNode>,
    options: NodeOptions,
    conflicts: Conflicts,
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

/// Registers the node gauges and starts the controller on the stream of nodes whose inputs changed.
pub fn start(
    shared: &Arc<Shared>,
    options: NodeOptions,
    changed_nodes: impl Stream<Item = Result<IndexedNode, watcher::Error>> + Send + 'static,
    tasks: &mut Supervisor,
) -> prometheus::Result<()> {
    let conflicts = Conflicts::default();
    shared.metrics.register(Box::new(Inventory::new(
        shared.nodes.clone(),
        shared.keys.clone(),
        conflicts.clone(),
        shared.leadership.clone(),
    )?))?;
    let ctx = Arc::new(NodeContext {
        shared: shared.clone(),
        api: Api::all(shared.client.clone()),
        options,
        conflicts,
    });
    tasks.spawn(CONTROLLER, run(ctx, changed_nodes, tasks.shutdown()));
    Ok(())
}

async fn run(
    ctx: Arc<NodeContext>,
    changed_nodes: impl Stream<Item = Result<IndexedNode, watcher::Error>> + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = ctx.shared.clone();
    let concurrency = usize::from(ctx.options.concurrency).max(1);
    let mut changed_nodes = std::pin::pin!(changed_nodes);
    // Fused: polled again after it ended (the leadership gone), it stays ended instead of panicking.
    let mut became_leader = std::pin::pin!(became_leader(shared.leadership.subscribe()).fuse());
    let mut synced = shared.nodes_synced.clone();
    let mut resync = tokio::time::interval_at(
        tokio::time::Instant::now() + ctx.options.resync,
        ctx.options.resync,
    );
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queue = WorkQueue::default();
    let mut in_flight = FuturesUnordered::new();
    // Nodes whose reconcile failed, each with one timer until its retry.
    let mut retries = FuturesUnordered::new();
    let mut retrying: HashSet<Arc<str>> = HashSet::new();
    let mut stopping = false;
    loop {
        // Nothing runs before the index has every node (as kube-runtime's Controller waited for its store):
        // the initial state queues every node once, and the reconciles read the whole index.
        let ready = *synced.borrow();
        if ready && !stopping {
            while in_flight.len() < concurrency {
                let Some(name) = queue.start_next() else {
                    break;
                };
                in_flight.push(reconcile_named(name, ctx.clone()));
            }
        }
        if stopping && in_flight.is_empty() {
            return Ok(());
        }
        tokio::select! {
            change = changed_nodes.next(), if !stopping => match change {
                Some(Ok(node)) => queue.push(node.name()),
                // Counted, logged and shown in readiness by the index; the watcher retries with backoff.
                Some(Err(err)) => tracing::debug!(error = %err, "node watch error"),
                None => anyhow::bail!("the node watch ended"),
            },
            Some((name, retry)) = in_flight.next() => {
                queue.finish(&name);
                if let Some(delay) = retry
                    && retrying.insert(name.clone())
                {
                    retries.push(async move {
                        tokio::time::sleep(delay).await;
                        name
                    });
                }
            }
            Some(name) = retries.next() => {
                retrying.remove(&name);
                queue.push(&name);
            }
            _ = resync.tick(), if !stopping => push_every_node(&shared, &mut queue),
            Some(()) = became_leader.next(), if !stopping => push_every_node(&shared, &mut queue),
            // Every (re-)list that completes: during a re-list (after a 410) the index serves each node as
            // it was until the list brings it, and keeps nodes the list will not bring until it is whole
            // (crate::index_writer), so a node reconciled then may have read its old inputs; now that the
            // index holds the list, go over every node (a plan per node, writes only where labels are
            // wrong). Found by tests/faults.rs `expired_watch_410_relists`.
            Ok(()) = synced.changed(), if !stopping => {
                if *synced.borrow_and_update() {
                    push_every_node(&shared, &mut queue);
                }
            }
            () = shutdown.cancelled(), if !stopping => {
                // Graceful: what runs finishes, nothing new starts.
                stopping = true;
                if !ready {
                    tracing::info!("shutting down before the node watch synced; nothing in flight");
                }
            }
        }
    }
}

/// Queues every node of the index: the resync's safety net, and a new leader's takeover.
fn push_every_node(shared: &Shared, queue: &mut WorkQueue) {
    for node in shared.nodes.state() {
        queue.push(node.name());
    }
}

/// Reconciles the node of that name as the index has it now (a node deleted meanwhile needs nothing); returns
/// the name and, when the reconcile failed, how long until it is retried.
async fn reconcile_named(name: Arc<str>, ctx: Arc<NodeContext>) -> (Arc<str>, Option<Duration>) {
    let Some(node) = ctx.shared.nodes.get(&ObjectRef::new(&name)) else {
        return (name, None);
    };
    match reconcile(&node, &ctx).await {
        Ok(()) => (name, None),
        Err(err) => (name, Some(error_policy(&node, &err, &ctx))),
    }
}

/// Fires each time this replica becomes the leader, so it reconciles every node at once instead of waiting
/// for the resync interval.
fn became_leader(
    changes: tokio::sync::watch::Receiver<bool>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(changes, |mut changes| async move {
        loop {
            changes.changed().await.ok()?;
            if *changes.borrow_and_update() {
                return Some(((), changes));
            }
        }
    })
}

#[tracing::instrument(skip_all, fields(node = %node.name_any()))]
async fn reconcile(node: &IndexedNode, ctx: &NodeContext) -> Result<(), NodeError> {
    let shared = &ctx.shared;
    let _timer = shared.metrics.reconcile_duration.start_timer();
    let name = node.name_any();
    let plan = plan(node, &shared.keys);
    if !shared.leadership.is_leader() {
        // A new leader reconciles every node when it takes over (see run.rs), so nothing is lost here.
        return Ok(());
    }

    if let Some(warning) = plan.warning() {
        tracing::warn!(reason = warning.reason, "{}", warning.message);
        publish(shared, node, warning.reason, warning.message).await;
    }
    let Some(desired) = plan.desired else {
        tracing::debug!("kernelVersion not reported yet; waiting");
        return Ok(());
    };
    let owned = node.applied_label_keys();
    let current = node.labels();
    if labels_hold(&current, &desired, &owned) {
        ctx.conflicts.set(&name, false);
        return Ok(());
    }

    let change = describe_change(&current, &desired, &owned);
    if shared.dry_run {
        tracing::info!(state = ?plan.state, change = %change, "dry run: would apply labels");
        return Ok(());
    }
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = ctx.options.force_conflicts;
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": desired },
    });
    match ctx.api.patch(&name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => {
            shared.metrics.label_writes.inc();
            ctx.conflicts.set(&name, false);
            tracing::info!(change = %change, "applied labels");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            shared.metrics.label_conflicts.inc();
            ctx.conflicts.set(&name, true);
            let message = format!(
                "labels are owned by another field manager with other values, not forced (run with --force-conflicts to take them): {}",
                status.message
            );
            tracing::warn!("{message}");
            publish(shared, node, "LabelConflict", message).await;
            Ok(())
        }
        Err(source) => Err(NodeError::Apply { node: name, source }),
    }
}

/// Counts and logs a failed reconcile; returns how long until the node is tried again.
fn error_policy(node: &IndexedNode, err: &NodeError, ctx: &NodeContext) -> Duration {
    let category = err.category();
    ctx.shared.metrics.api_error(CONTROLLER, category);
    tracing::warn!(node = %node.name_any(), category, error = %err, "reconcile failed; retrying");
    // Missing permissions are not fixed by hammering the API server.
    let delay = if matches!(category, "forbidden" | "unauthorized") {
        60
    } else {
        5
    };
    Duration::from_secs(delay)
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

async fn publish(shared: &Shared, node: &IndexedNode, reason: &str, note: String) {
    let reference = node.object_ref(&());
    shared
        .publish(
            CONTROLLER,
            &reference,
            Event {
                type_: EventType::Warning,
                reason: reason.to_owned(),
                note: Some(note),
                action: "LabelNode".to_owned(),
                secondary: None,
            },
            Repeats::Series,
        )
        .await;
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
        keys.iter().map(ToString::to_string).collect()
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
