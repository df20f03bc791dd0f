//! The independent checker: its own watches (admin identity, never through the replicas' proxies) of the
//! soak's Nodes, Pods, the Lease and our Events. It judges from what it saw, with the library's pure `plan`
//! as the only knowledge of what labels a node should carry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use osbuild_testkit::faults::{desired, ours};

use crate::placement;
use crate::verdict::{Invariant, Violation, violation};

pub type Labels = BTreeMap<String, String>;

/// A hand edit of a node's labels is in flight or landed at this resourceVersion; until the controller
/// has put a correct set back after it, any label set on the node is the hand's doing.
const TAMPER_IN_FLIGHT: u64 = u64::MAX;

#[derive(Default)]
struct NodeTrack {
    /// Distinct desired label sets in the order seen (the node's kernelVersion states).
    states: Vec<Labels>,
    ours: Labels,
    /// When the latest state was first seen, until our labels matched it.
    pending_since: Option<Instant>,
    tamper: Option<u64>,
    tamper_since: Option<Instant>,
    /// The soak's second at which the hand edit began (for the report's slowest repair).
    tamper_at: f64,
    /// The resourceVersion of the latest observation.
    seen_rv: u64,
}

impl NodeTrack {
    /// When the hand edit's version is known and a later observation has our labels right again: ends the
    /// edit and returns (seconds it took, the second it began).
    fn repaired(&mut self) -> Option<(f64, f64)> {
        let t = self.tamper?;
        if t == TAMPER_IN_FLIGHT || self.seen_rv <= t || self.states.last() != Some(&self.ours) {
            return None;
        }
        self.tamper = None;
        self.tamper_since
            .take()
            .map(|s| (s.elapsed().as_secs_f64(), self.tamper_at))
    }
}

/// One version of the Lease as the checker saw it.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    pub holder: String,
    pub acquired: Timestamp,
    pub renewed: Timestamp,
    pub transitions: i32,
}

/// A mismatch episode of one pod: from the status showing the failure to the status showing the container
/// running (`None`: still failing), dated by the pod's own status ([`containers_ready_since`]), the way
/// every replica dates it, and not by when the checker's watch delivered it: that lags by tens of seconds
/// while thousands of pods stream in, and an Event published before the checker saw the failure would
/// match no episode.
#[derive(Debug, Clone)]
pub struct Episode {
    pub pod: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// The status had no transition time for the start: dated by the checker's clock instead.
    pub start_by_checker: bool,
}

/// Our OSVersionMismatch Event about a pod: when first and last published, and how often.
#[derive(Debug, Clone)]
pub struct Published {
    pub pod_uid: String,
    pub first: Timestamp,
    pub last: Timestamp,
    pub count: i32,
    pub reporter: String,
}

#[derive(Default)]
pub struct State {
    nodes: HashMap<String, NodeTrack>,
    relist: Option<HashSet<String>>,
    /// Wrong label sets.
    pub violations: Vec<Violation>,
    pub observations: usize,
    pub label_changes: usize,
    /// (seconds into the soak, seconds until our labels matched a new kernelVersion state).
    pub latencies: Vec<(f64, f64)>,
    pub tamper_repairs: Vec<f64>,
    /// The slowest repair of a hand edit: (seconds, node, the soak's second the edit began), so it can
    /// be looked up in the replicas' logs.
    pub slowest_repair: Option<(f64, String, f64)>,
    pub lease: Vec<LeaseRecord>,
    pub episodes: HashMap<String, Vec<Episode>>,
    pub events: HashMap<String, Published>,
    /// The soak's placement pods by uid.
    pub placements: HashMap<String, PlacementTrack>,
    /// The controller's latest placement Event (reason, note, time) by pod uid: what it says it decided.
    pub placement_events: HashMap<String, (String, String, Timestamp)>,
    pods_relist: Option<HashSet<String>>,
    started: Option<Instant>,
    /// How the checker's own pod watch fared: a witness that lags or starts over sees less.
    pub pod_watch: WatchHealth,
}

#[derive(Debug, Default)]
pub struct WatchHealth {
    pub lists_started: usize,
    pub lists_done: usize,
    pub errors: usize,
    /// Seconds from the checker's start to its first complete list.
    pub first_list_done: Option<f64>,
}

/// A placement pod (`place-<n>`) as the churn created it and the checker saw it.
#[derive(Debug, Default)]
pub struct PlacementTrack {
    pub name: String,
    /// The churn's create returned it with our gate (the policy at work), and when.
    created_gated: Option<Instant>,
    /// First seen with our gate by the checker.
    seen_gated: Option<Instant>,
    /// Our gate as last seen.
    pub gated_now: bool,
    /// First seen without our gate: when, and the judgement of its node selection.
    released: Option<(Instant, Result<(), String>)>,
    /// Gone (deleted by the churn), and whether it still had our gate then.
    deleted: Option<bool>,
    /// Released with a selection of no node (no build runs every image of it).
    nowhere: bool,
    /// The pod's creationTimestamp (the API server's clock).
    created: Option<Timestamp>,
    /// What the judgement rests on ([`placement::describe`]), as last seen (frozen once released).
    description: String,
}

impl PlacementTrack {
    /// The policy gated it: the churn or the checker saw the gate.
    pub fn was_gated(&self) -> bool {
        self.created_gated.is_some() || self.seen_gated.is_some()
    }

    fn gated_since(&self) -> Option<Instant> {
        match (self.created_gated, self.seen_gated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the checker concludes about placement.
#[derive(Debug, Default)]
pub struct PlacementSummary {
    pub violations: Vec<Violation>,
    pub gated: usize,
    pub placed: usize,
    /// Placed off every node: no Windows build runs all their images.
    pub nowhere: usize,
    pub deleted_while_gated: usize,
    pub still_gated: usize,
    /// Seconds from the gate seen (or the create returned) to the pod seen without it.
    pub gate_to_placed: Vec<f64>,
}

#[derive(Clone)]
pub struct Checker {
    state: Arc<Mutex<State>>,
}

/// The checker's watches list in one request, not in pages of 500: the soak's API server has no watch cache
/// and compacts etcd every second, so a paged list of 10,000 pods on a loaded machine can outlive its
/// snapshot, get 410 on a continue and start over. A 3-minute run with the long mode's sizes (seed
/// 1796106101) saw 14 Events in the first 25 s of churn about pods the checker never saw failing: whole
/// episodes (40 s and more) unseen while its pod list had not completed. The report counts the pod
/// watch's lists and errors ([`WatchHealth`]).
fn whole_lists() -> watcher::Config {
    watcher::Config {
        page_size: None,
        ..watcher::Config::default()
    }
}

/// Whether a container status shows the failure the soak's pods are made to show.
fn failing(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
                waiting.is_some()
            })
        })
}

/// When the pod's `ContainersReady` condition last became `status` ("False": the containers stopped being
/// ready, an episode began; "True": they run again, it ended), as the status records it (whole seconds).
/// The controller reads the same time (`pods::detect::not_ready_since`). `None`: the condition is absent,
/// has another status, or carries no time.
fn containers_ready_since(pod: &Pod, status: &str) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ContainersReady" && c.status == status)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

impl Checker {
    pub fn start(client: &Client, selector: &str, namespace: &str, lease: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            started: Some(Instant::now()),
            ..State::default()
        }));
        let checker = Self { state };
        let nodes: Api<Node> = Api::all(client.clone());
        let c = checker.clone();
        let config = whole_lists().labels(selector);
        tokio::spawn(async move {
            let mut events = pin!(watcher(nodes, config).default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Init) => c.lock().relist = Some(HashSet::new()),
                    Ok(watcher::Event::InitApply(node)) => {
                        let mut s = c.lock();
                        if let Some(seen) = s.relist.as_mut() {
                            seen.insert(node.name_any());
                        }
                        s.observe_node(&node);
                    }
                    Ok(watcher::Event::Apply(node)) => c.lock().observe_node(&node),
                    Ok(watcher::Event::Delete(node)) => {
                        c.lock().nodes.remove(&node.name_any());
                    }
                    Ok(watcher::Event::InitDone) => {
                        let mut s = c.lock();
                        if let Some(seen) = s.relist.take() {
                            s.nodes.retain(|name, _| seen.contains(name));
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let c = checker.clone();
        tokio::spawn(async move {
            let mut events = pin!(watcher(pods, whole_lists()).default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(pod)) => c.lock().observe_pod(&pod),
                    Ok(watcher::Event::InitApply(pod)) => {
                        let mut s = c.lock();
                        if let (Some(seen), Some(uid)) = (s.pods_relist.as_mut(), pod.uid()) {
                            seen.insert(uid);
                        }
                        s.observe_pod(&pod);
                    }
                    Ok(watcher::Event::Init) => {
                        let mut s = c.lock();
                        s.pods_relist = Some(HashSet::new());
                        s.pod_watch.lists_started += 1;
                    }
                    Ok(watcher::Event::InitDone) => {
                        let mut s = c.lock();
                        s.pod_watch.lists_done += 1;
                        let at = s.since_start();
                        s.pod_watch.first_list_done.get_or_insert(at);
                        if let Some(seen) = s.pods_relist.take() {
                            // deleted while the watch was broken: a relist has no Delete for them
                            for (uid, track) in &mut s.placements {
                                if !seen.contains(uid) && track.deleted.is_none() {
                                    track.deleted = Some(track.gated_now);
                                }
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => c.lock().pod_deleted(&pod),
                    Err(_) => c.lock().pod_watch.errors += 1,
                }
            }
        });
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let c = checker.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={lease}"));
        tokio::spawn(async move {
            let mut events = pin!(watcher(leases, config).default_backoff());
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) = event {
                    c.lock().observe_lease(&lease);
                }
            }
        });
        let published: Api<Event> = Api::namespaced(client.clone(), namespace);
        let c = checker.clone();
        tokio::spawn(async move {
            let mut events = pin!(watcher(published, whole_lists()).default_backoff());
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = event {
                    c.lock().observe_event(&e);
                }
            }
        });
        checker
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The harness is about to edit our labels on `node` by hand.
    pub fn tamper_begin(&self, node: &str) {
        let mut s = self.lock();
        let at = s.since_start();
        let track = s.nodes.entry(node.to_owned()).or_default();
        track.tamper = Some(TAMPER_IN_FLIGHT);
        track.tamper_since = Some(Instant::now());
        track.tamper_at = at;
    }

    /// The hand edit landed at `rv` (`None`: unknown whether it landed; the node stays excused until the end).
    /// The controller's repair may have been observed before the edit's own answer came back: then it counts
    /// now, not at the node's next change.
    pub fn tamper_done(&self, node: &str, rv: Option<u64>) {
        let mut s = self.lock();
        let repaired = s.nodes.get_mut(node).and_then(|track| {
            track.tamper = Some(rv.unwrap_or(TAMPER_IN_FLIGHT));
            track.repaired()
        });
        if let Some(repair) = repaired {
            s.credit_repair(node, repair);
        }
    }

    /// Nodes whose labels are not the complete set for their current state (nodes not reported yet, and
    /// those whose hand edit's fate is unknown and still wrong, are included: convergence covers them all).
    pub fn unconverged(&self) -> Vec<String> {
        let s = self.lock();
        let mut left: Vec<String> = s
            .nodes
            .iter()
            .filter(|(_, t)| t.states.last().is_some_and(|d| *d != t.ours))
            .map(|(n, _)| n.clone())
            .collect();
        left.sort();
        left
    }

    /// The nodes of [`Self::unconverged`] (the first `limit`), each with our labels as last seen and the
    /// set its current kernelVersion wants: a convergence violation that can be analysed from the report.
    pub fn unconverged_detail(&self, limit: usize) -> String {
        let names = self.unconverged();
        let s = self.lock();
        let shown: Vec<String> = names
            .iter()
            .take(limit)
            .filter_map(|n| {
                let t = s.nodes.get(n)?;
                Some(format!(
                    "{n}: ours {:?}, wants {:?}{}",
                    t.ours,
                    t.states.last(),
                    if t.tamper.is_some() {
                        " (hand edit in flight)"
                    } else {
                        ""
                    }
                ))
            })
            .collect();
        format!(
            "{} nodes [{}{}]",
            names.len(),
            shown.join("; "),
            if names.len() > limit { "; ..." } else { "" }
        )
    }

    /// The churn created a placement pod; `gated`: the API server returned it with our gate.
    pub fn placement_created(&self, uid: &str, name: &str, gated: bool) {
        let mut s = self.lock();
        let track = s.placements.entry(uid.to_owned()).or_default();
        track.name = name.to_owned();
        if gated {
            track.created_gated = Some(Instant::now());
            if track.released.is_none() && track.deleted.is_none() {
                track.gated_now = true;
            }
        }
    }

    /// Placement pods that still carry our gate (gated by the policy, not deleted).
    pub fn still_gated(&self) -> Vec<String> {
        let s = self.lock();
        let mut left: Vec<String> = s
            .placements
            .values()
            .filter(|t| t.was_gated() && t.gated_now && t.deleted.is_none())
            .map(|t| t.name.clone())
            .collect();
        left.sort();
        left
    }

    pub fn node_count(&self) -> usize {
        self.lock().nodes.len()
    }

    /// The current holder of the Lease as last seen (empty: none).
    pub fn holder(&self) -> String {
        self.lock()
            .lease
            .last()
            .map(|l| l.holder.clone())
            .unwrap_or_default()
    }
}

fn rv(node: &Node) -> u64 {
    node.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn kernel(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kernel_version.clone())
        .unwrap_or_default()
}

impl State {
    /// Counts a repaired hand edit (seconds it took, the second it began), keeping the slowest.
    fn credit_repair(&mut self, node: &str, (seconds, edited_at): (f64, f64)) {
        self.tamper_repairs.push(seconds);
        if self
            .slowest_repair
            .as_ref()
            .is_none_or(|(slowest, _, _)| seconds > *slowest)
        {
            self.slowest_repair = Some((seconds, node.to_owned(), edited_at));
        }
    }

    fn since_start(&self) -> f64 {
        self.started.map_or(0.0, |s| s.elapsed().as_secs_f64())
    }

    fn observe_node(&mut self, node: &Node) {
        self.observations += 1;
        let now = Instant::now();
        let at = self.since_start();
        let name = node.name_any();
        let rv = rv(node);
        let mut wrong = None;
        let mut latency = None;
        let repaired;
        let mut changed = false;
        {
            let track = self.nodes.entry(name.clone()).or_default();
            if let Some(d) = desired(node)
                && track.states.last() != Some(&d)
            {
                track.states.push(d);
                track.pending_since = Some(now);
            }
            let ours = ours(node);
            if ours != track.ours {
                changed = true;
                let n = track.states.len();
                let current = track.states.last();
                let previous = n.checked_sub(2).and_then(|i| track.states.get(i));
                let acceptable = current == Some(&ours) || previous == Some(&ours);
                let excused = track.tamper.is_some();
                if !acceptable && !excused && current.is_some() {
                    wrong = Some(format!(
                        "node {name} (rv {rv}, kernelVersion {:?}): our labels became {ours:?}; current state wants {current:?}, previous {previous:?}",
                        kernel(node)
                    ));
                }
                track.ours = ours;
            }
            track.seen_rv = track.seen_rv.max(rv);
            repaired = track.repaired();
            if track.states.last() == Some(&track.ours)
                && let Some(since) = track.pending_since.take()
            {
                latency = Some(since.elapsed().as_secs_f64());
            }
        }
        if changed {
            self.label_changes += 1;
        }
        if let Some(v) = wrong {
            self.violations.push(violation(
                Invariant::WrongLabels,
                format!("[{at:.1}s] wrong labels: {v}"),
            ));
        }
        if let Some(l) = latency {
            self.latencies.push((at, l));
        }
        if let Some(repair) = repaired {
            self.credit_repair(&name, repair);
        }
    }

    fn observe_placement(&mut self, uid: &str, name: String, pod: &Pod) {
        let now = Instant::now();
        let track = self.placements.entry(uid.to_owned()).or_default();
        track.name = name;
        track.gated_now = placement::has_gate(pod);
        track.created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if track.released.is_none() {
            track.description = placement::describe(pod);
        }
        if track.gated_now {
            track.seen_gated.get_or_insert(now);
        } else if track.released.is_none() {
            let judgement = match placement::pod_images(pod) {
                Some(images) => placement::judge_selection(
                    &placement::selections(pod),
                    &images,
                    placement::isolation_of(
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.runtime_class_name.as_deref()),
                    ),
                ),
                None => Err("runs an image that is not one of the soak's".into()),
            };
            track.nowhere = placement::selections(pod).contains(&placement::Selection::Nowhere);
            track.released = Some((now, judgement));
        }
    }

    fn pod_deleted(&mut self, pod: &Pod) {
        if let Some(track) = pod.uid().and_then(|uid| self.placements.get_mut(&uid))
            && track.deleted.is_none()
        {
            track.deleted = Some(placement::has_gate(pod));
        }
    }

    fn observe_pod(&mut self, pod: &Pod) {
        let (Some(uid), name) = (pod.uid(), pod.name_any()) else {
            return;
        };
        if name.starts_with(placement::POD_PREFIX) {
            self.observe_placement(&uid, name, pod);
            return;
        }
        track_episodes(
            self.episodes.entry(uid).or_default(),
            name,
            pod,
            Timestamp::now(),
        );
    }

    fn observe_lease(&mut self, lease: &Lease) {
        let Some(spec) = lease.spec.as_ref() else {
            return;
        };
        let (Some(acquired), Some(renewed)) =
            (spec.acquire_time.as_ref(), spec.renew_time.as_ref())
        else {
            return;
        };
        self.lease.push(LeaseRecord {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            acquired: acquired.0,
            renewed: renewed.0,
            transitions: spec.lease_transitions.unwrap_or(0),
        });
    }

    fn observe_event(&mut self, event: &Event) {
        if event.action.as_deref() == Some("Place")
            && let Some(pod_uid) = event.regarding.as_ref().and_then(|r| r.uid.clone())
        {
            let at = event
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or_else(Timestamp::now);
            self.placement_events.insert(
                pod_uid,
                (
                    event.reason.clone().unwrap_or_default(),
                    event.note.clone().unwrap_or_default(),
                    at,
                ),
            );
            return;
        }
        if event.reason.as_deref() != Some("OSVersionMismatch") {
            return;
        }
        let (Some(uid), Some(pod_uid)) = (
            event.metadata.uid.clone(),
            event.regarding.as_ref().and_then(|r| r.uid.clone()),
        ) else {
            return;
        };
        let first = event
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or_else(Timestamp::now);
        let (count, last) = event
            .series
            .as_ref()
            .map_or((1, first), |s| (s.count.max(1), s.last_observed_time.0));
        self.events.insert(
            uid,
            Published {
                pod_uid,
                first,
                last,
                count,
                reporter: event.reporting_instance.clone().unwrap_or_default(),
            },
        );
    }
}

/// Updates a pod's episodes with its status as the watch delivered it at `now` (the checker's clock, used
/// only when the status carries no transition time).
fn track_episodes(episodes: &mut Vec<Episode>, name: String, pod: &Pod, now: Timestamp) {
    let not_ready_since = containers_ready_since(pod, "False");
    match episodes.last_mut() {
        Some(open) if open.end.is_none() => {
            if failing(pod) {
                // Failing since later than the open episode began: the pod ran and failed again while the
                // checker's watch was down (a re-list shows only the latest status). The missed recovery was
                // no later than the new failure.
                if let Some(since) = not_ready_since
                    && !open.start_by_checker
                    && since > open.start
                {
                    open.end = Some(since);
                    episodes.push(Episode {
                        pod: name,
                        start: since,
                        end: None,
                        start_by_checker: false,
                    });
                }
            } else if running(pod) {
                open.end = Some(containers_ready_since(pod, "True").unwrap_or(now));
            }
        }
        _ if failing(pod) => episodes.push(Episode {
            pod: name,
            start: not_ready_since.unwrap_or(now),
            end: None,
            start_by_checker: not_ready_since.is_none(),
        }),
        _ => {}
    }
}

/// Which replica an identity in the Lease or on an Event belongs to: "soak-a-2" → "a".
pub fn replica_of(identity: &str) -> Option<&str> {
    identity
        .strip_prefix("soak-")
        .and_then(|rest| rest.split('-').next())
}

/// Each replica's terms as leader from the Lease history: (replica, acquired, last renewal seen).
pub fn terms(lease: &[LeaseRecord]) -> Vec<(String, Timestamp, Timestamp)> {
    let mut terms: Vec<(String, Timestamp, Timestamp)> = Vec::new();
    for record in lease {
        if record.holder.is_empty() {
            continue;
        }
        let Some(replica) = replica_of(&record.holder) else {
            continue;
        };
        match terms
            .iter_mut()
            .find(|(r, a, _)| r == replica && *a == record.acquired)
        {
            Some(term) => term.2 = term.2.max(record.renewed),
            None => terms.push((replica.to_owned(), record.acquired, record.renewed)),
        }
    }
    terms
}

/// How much earlier than an episode's start an Event may be and still be the episode's: the Event's time
/// comes from the leader's clock, the start from the status' (the kubelet's, here the churn's), truncated
/// to the second, which only makes the start earlier. The controller allows the same
/// (`pods::episodes::CLOCK_SKEW`).
const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// Every mismatch episode has exactly one Event: returns the violations and the number of episodes judged.
/// An Event belongs to the latest episode of its pod that started no later than it ([`CLOCK_SKEW`]
/// allowed); both times are the pod's and the leader's, never when the checker saw them.
pub fn judge_events(state: &State) -> (Vec<Violation>, usize) {
    let slack = CLOCK_SKEW.as_millis() as i64;
    // (pod uid, episode) → the Events counted for it.
    let mut per_episode: HashMap<(&str, usize), Vec<Counted<'_>>> = HashMap::new();
    let mut violations = Vec::new();
    let episode_at = |pod_uid: &str, t: Timestamp| -> Option<usize> {
        let episodes = state.episodes.get(pod_uid)?;
        episodes
            .iter()
            .rposition(|e| e.start.as_millisecond() <= t.as_millisecond() + slack)
    };
    let mut events: Vec<(&String, &Published)> = state.events.iter().collect();
    events.sort_by_key(|(uid, p)| (p.first, *uid));
    for (uid, published) in events {
        let pod = published.pod_uid.as_str();
        let mut assign = |t: Timestamp, n: i32| match episode_at(pod, t) {
            Some(i) => {
                per_episode
                    .entry((pod, i))
                    .or_default()
                    .push((uid, &published.reporter, t, n))
            }
            None => {
                let episodes = state.episodes.get(pod).map(Vec::as_slice).unwrap_or(&[]);
                violations.push(violation(
                    Invariant::EventWithoutEpisode,
                    format!(
                        "Event {uid} (by {}) about pod {} ({pod}) at {t} matches no episode: the pod's episodes {}",
                        published.reporter,
                        episodes.first().map_or("?", |e| e.pod.as_str()),
                        describe(episodes)
                    ),
                ));
            }
        };
        assign(published.first, 1);
        if published.count > 1 {
            assign(published.last, published.count - 1);
        }
    }
    let mut judged = 0;
    let mut pods: Vec<(&String, &Vec<Episode>)> = state.episodes.iter().collect();
    pods.sort_by_key(|(uid, e)| (e.first().map(|e| e.start), *uid));
    for (pod_uid, episodes) in pods {
        for (i, e) in episodes.iter().enumerate() {
            judged += 1;
            let counted = per_episode
                .get(&(pod_uid.as_str(), i))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let n: i32 = counted.iter().map(|(.., n)| n).sum();
            if n != 1 {
                let seen: Vec<String> = counted
                    .iter()
                    .map(|(uid, by, t, n)| format!("{uid} by {by} at {t} (x{n})"))
                    .collect();
                violations.push(violation(
                    Invariant::EpisodeEvents,
                    format!(
                        "pod {} ({pod_uid}) episode {i} of {}: {n} OSVersionMismatch Events, expected exactly 1 [{}]",
                        e.pod,
                        describe(episodes),
                        seen.join("; ")
                    ),
                ));
            }
        }
    }
    (violations, judged)
}

/// An Event counted for an episode: its uid, reporter, time, and how many it counts for (a series).
type Counted<'a> = (&'a str, &'a str, Timestamp, i32);

/// A pod's episodes for a report: `[start .. end, ...]`, a start the checker had to date itself marked.
fn describe(episodes: &[Episode]) -> String {
    let each: Vec<String> = episodes
        .iter()
        .map(|e| {
            format!(
                "{}{} .. {}",
                e.start,
                if e.start_by_checker {
                    " (checker's clock)"
                } else {
                    ""
                },
                e.end.map_or("still failing".into(), |t| t.to_string())
            )
        })
        .collect();
    format!("[{}]", each.join(", "))
}

/// Placement's invariants: every pod the policy gated had our gate removed (unless the churn deleted it
/// first), and its node selection lets it run only on hosts that run every image of it; plus the counts.
pub fn judge_placement(state: &State) -> PlacementSummary {
    let mut summary = PlacementSummary::default();
    let mut tracks: Vec<(&String, &PlacementTrack)> = state.placements.iter().collect();
    tracks.sort_by_key(|(_, t)| t.name.clone());
    for (uid, track) in tracks.into_iter().filter(|(_, t)| t.was_gated()) {
        summary.gated += 1;
        // Self-contained: the pod, what the judgement rests on, and what the controller said it decided.
        let pod = format!(
            "pod {} ({uid}, created {})",
            track.name,
            track
                .created
                .map_or("at an unknown time".to_owned(), |t| t.to_string()),
        );
        let context = || {
            let said = state.placement_events.get(uid.as_str()).map_or(
                "no placement Event of the controller seen".to_owned(),
                |(reason, note, at)| format!("the controller's Event at {at}: {reason}: {note}"),
            );
            format!("{}; {said}", track.description)
        };
        match (&track.released, track.deleted) {
            (Some((at, judgement)), _) => {
                summary.placed += 1;
                summary.nowhere += usize::from(track.nowhere);
                if let Some(since) = track.gated_since() {
                    summary
                        .gate_to_placed
                        .push(at.saturating_duration_since(since).as_secs_f64());
                }
                if let Err(wrong) = judgement {
                    summary.violations.push(violation(
                        Invariant::PlacementSelection,
                        format!("{pod}: {wrong}; released with {}", context()),
                    ));
                }
            }
            (None, Some(_)) => summary.deleted_while_gated += 1,
            (None, None) => {
                summary.still_gated += 1;
                summary.violations.push(violation(
                    Invariant::StillGated,
                    format!(
                        "{pod}: still gated at the end (gated {:.0?} ago by the harness's clock); {}",
                        track.gated_since().map(|s| s.elapsed()).unwrap_or_default(),
                        context()
                    ),
                ));
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A soak pod as the churn writes it (workload.rs): failing (waiting RunContainerError; the checker
    /// reads no message) or running, with the `ContainersReady` condition's transition time (`None`: no
    /// conditions).
    fn pod(failing: bool, since: Option<&str>) -> Pod {
        let state = if failing {
            json!({"waiting": {"reason": "RunContainerError"}})
        } else {
            json!({"running": {"startedAt": "2026-11-23T01:00:00Z"}})
        };
        let mut status = json!({"containerStatuses": [{"name": "app", "image": "i", "imageID": "",
            "ready": !failing, "restartCount": 1, "state": state}]});
        if let Some(since) = since {
            status["conditions"] = json!([{"type": "ContainersReady",
                "status": if failing { "False" } else { "True" }, "lastTransitionTime": since}]);
        }
        serde_json::from_value(
            json!({"metadata": {"name": "pod-7", "namespace": "soak", "uid": "pod-uid"},
            "spec": {"containers": [{"name": "app", "image": "i"}]}, "status": status}),
        )
        .unwrap()
    }

    fn event(uid: &str, time: &str) -> Event {
        serde_json::from_value(json!({"metadata": {"name": uid, "uid": uid},
            "eventTime": time, "reason": "OSVersionMismatch", "reportingController": "osbuild-controller",
            "reportingInstance": "soak-a-1", "action": "Detect",
            "regarding": {"kind": "Pod", "name": "pod-7", "uid": "pod-uid"}}))
        .unwrap()
    }

    /// The checker's pod watch delivers `pod` at `seen`.
    fn observe(state: &mut State, pod: &Pod, seen: &str) {
        track_episodes(
            state.episodes.entry("pod-uid".into()).or_default(),
            "pod-7".into(),
            pod,
            at(seen),
        );
    }

    /// A node whose labels are right for its one state, with a hand edit begun (version unknown yet) and
    /// the checker's latest observation at resourceVersion 12.
    fn edited_node() -> NodeTrack {
        let right: Labels = [("beta.kubernetes.io/osbuild".to_owned(), "17763".to_owned())].into();
        NodeTrack {
            states: vec![right.clone()],
            ours: right,
            tamper: Some(TAMPER_IN_FLIGHT),
            tamper_since: Some(Instant::now()),
            seen_rv: 12,
            ..NodeTrack::default()
        }
    }

    // Seed 20261205 (docs/reliability.md): the leader repaired a hand edit within a second, the checker
    // saw the repair before the edit's own answer came back, and credited it at the node's next change,
    // 198 s later.
    #[test]
    fn a_repair_seen_before_the_edit_s_answer_counts_when_the_answer_comes() {
        let mut track = edited_node();
        assert_eq!(
            track.repaired(),
            None,
            "the edit's version is not known yet"
        );
        track.tamper = Some(10);
        assert!(track.repaired().is_some(), "rv 12 is after the edit at 10");
        assert_eq!(track.tamper, None);
    }

    #[test]
    fn the_edit_s_own_version_or_wrong_labels_are_no_repair() {
        let mut at_the_edit = edited_node();
        at_the_edit.tamper = Some(12);
        assert_eq!(at_the_edit.repaired(), None);
        let mut wrong = edited_node();
        wrong.tamper = Some(10);
        wrong.ours.clear();
        assert_eq!(wrong.repaired(), None);
        // Positive control: the same node with our labels back is repaired.
        wrong.ours = wrong.states[0].clone();
        assert!(wrong.repaired().is_some());
    }

    // Seed 20261201 (docs/reliability.md): the checker's watch saw failures tens of seconds late while
    // 10,000 pods streamed in, and the leader's Event, published in between, matched no episode.
    #[test]
    fn an_event_before_the_checker_saw_the_failure_but_after_the_status_says_it_began_is_the_episodes()
     {
        let mut state = State::default();
        observe(
            &mut state,
            &pod(true, Some("2026-12-01T04:30:20Z")),
            "2026-12-01T04:30:50Z",
        );
        state.observe_event(&event("e1", "2026-12-01T04:30:23.489634Z"));
        let episodes = &state.episodes["pod-uid"];
        assert_eq!(episodes.len(), 1);
        assert_eq!(episodes[0].start, at("2026-12-01T04:30:20Z"));
        assert!(!episodes[0].start_by_checker);
        let (violations, judged) = judge_events(&state);
        assert_eq!(judged, 1);
        assert!(violations.is_empty(), "{violations:?}");
    }

    // The positive control: an Event from before the episode's transition (beyond the clock skew) is an
    // earlier episode's, not this one's: it matches no episode and this one has no Event.
    #[test]
    fn an_event_from_before_the_status_transition_is_not_the_episodes() {
        let mut state = State::default();
        observe(
            &mut state,
            &pod(true, Some("2026-12-01T04:30:20Z")),
            "2026-12-01T04:30:21Z",
        );
        state.observe_event(&event("early", "2026-12-01T04:30:18.5Z"));
        let (violations, _) = judge_events(&state);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations[0].text.contains("Event early")
                && violations[0].text.contains("matches no episode")
        );
        assert!(violations[1].text.contains("0 OSVersionMismatch Events"));
        // within the clock skew of the (truncated) start it counts
        state.events.clear();
        state.observe_event(&event("skewed", "2026-12-01T04:30:19.2Z"));
        let (violations, _) = judge_events(&state);
        assert!(violations.is_empty(), "{violations:?}");
    }

    // Two episodes back to back: each Event goes to the episode whose status transition precedes it, and
    // the end is the ContainersReady=True transition, not when the checker saw it.
    #[test]
    fn episodes_end_and_start_at_their_status_transitions() {
        let mut state = State::default();
        observe(
            &mut state,
            &pod(true, Some("2026-12-01T05:00:00Z")),
            "2026-12-01T05:00:30Z",
        );
        observe(
            &mut state,
            &pod(false, Some("2026-12-01T05:00:45Z")),
            "2026-12-01T05:01:20Z",
        );
        observe(
            &mut state,
            &pod(true, Some("2026-12-01T05:00:50Z")),
            "2026-12-01T05:01:21Z",
        );
        let episodes = &state.episodes["pod-uid"];
        assert_eq!(episodes.len(), 2);
        assert_eq!(episodes[0].end, Some(at("2026-12-01T05:00:45Z")));
        assert_eq!(episodes[1].start, at("2026-12-01T05:00:50Z"));
        state.observe_event(&event("first", "2026-12-01T05:00:01Z"));
        state.observe_event(&event("second", "2026-12-01T05:00:51Z"));
        let (violations, judged) = judge_events(&state);
        assert_eq!(judged, 2);
        assert!(violations.is_empty(), "{violations:?}");
        // the second Event alone: the first episode lacks one, the second is matched
        state.events.remove("first");
        let (violations, _) = judge_events(&state);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].text.contains("episode 0 of"));
    }

    // A re-list after the checker's watch broke shows only the latest status: failing again since a later
    // transition means the pod recovered and failed meanwhile, a second episode with its own Event.
    #[test]
    fn a_later_failure_seen_after_a_gap_is_a_new_episode() {
        let mut state = State::default();
        observe(
            &mut state,
            &pod(true, Some("2026-12-01T05:00:00Z")),
            "2026-12-01T05:00:01Z",
        );
        observe(
            &mut state,
            &pod(true, Some("2026-12-01T05:00:00Z")),
            "2026-12-01T05:00:10Z",
        );
        assert_eq!(state.episodes["pod-uid"].len(), 1, "the same status again");
        observe(
            &mut state,
            &pod(true, Some("2026-12-01T05:00:47Z")),
            "2026-12-01T05:00:50Z",
        );
        let episodes = &state.episodes["pod-uid"];
        assert_eq!(episodes.len(), 2);
        assert_eq!(episodes[0].end, Some(at("2026-12-01T05:00:47Z")));
        state.observe_event(&event("first", "2026-12-01T05:00:02Z"));
        state.observe_event(&event("second", "2026-12-01T05:00:48Z"));
        let (violations, _) = judge_events(&state);
        assert!(violations.is_empty(), "{violations:?}");
    }

    // A status without the condition: the checker's own clock is all there is, and the report says so.
    #[test]
    fn without_a_transition_time_the_checkers_clock_dates_the_episode() {
        let mut state = State::default();
        observe(&mut state, &pod(true, None), "2026-12-01T05:00:30Z");
        observe(&mut state, &pod(false, None), "2026-12-01T05:01:30Z");
        let e = &state.episodes["pod-uid"][0];
        assert_eq!(e.start, at("2026-12-01T05:00:30Z"));
        assert!(e.start_by_checker);
        assert_eq!(e.end, Some(at("2026-12-01T05:01:30Z")));
        let (violations, _) = judge_events(&state);
        assert!(
            violations[0].text.contains("(checker's clock)"),
            "{violations:?}"
        );
    }

    /// A placement pod of the private ltsc2019 image with the pull secret, gated or released with
    /// `osbuild In values`.
    fn place_pod(values: Option<&[&str]>) -> Pod {
        let mut spec = json!({"containers": [{"name": "app", "image": "127.0.0.1:5001/private/ltsc2019"}],
            "imagePullSecrets": [{"name": "soak-pull"}]});
        match values {
            None => spec["schedulingGates"] = json!([{"name": placement::GATE}]),
            Some(values) => {
                spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": placement::OSBUILD, "operator": "In", "values": values}]}]}}});
            }
        }
        serde_json::from_value(
            json!({"metadata": {"name": "place-1592", "namespace": "soak",
            "uid": "place-uid", "creationTimestamp": "2026-12-01T04:40:00Z"}, "spec": spec}),
        )
        .unwrap()
    }

    // Seed 20261201: the report said only "selects osbuild 20348, where private/ltsc2019 does not run";
    // the violation now carries the images, isolation, pull secrets, affinity and the controller's Event.
    #[test]
    fn a_misplaced_pod_is_reported_with_everything_its_judgement_rests_on() {
        let mut state = State::default();
        state.observe_pod(&place_pod(None));
        state.observe_pod(&place_pod(Some(&["20348"])));
        state.observe_event(
            &serde_json::from_value(json!({"metadata": {"name": "p", "uid": "p"},
                "eventTime": "2026-12-01T04:40:01.5Z", "reason": "ImageOSUnknown", "action": "Place",
                "note": "(the controller's note)", "reportingController": "osbuild-controller",
                "reportingInstance": "soak-b-1", "regarding": {"kind": "Pod", "uid": "place-uid"}}))
            .unwrap(),
        );
        let summary = judge_placement(&state);
        assert_eq!((summary.gated, summary.placed), (1, 1));
        assert_eq!(summary.violations.len(), 1);
        let v = &summary.violations[0];
        assert_eq!(v.kind, Invariant::PlacementSelection);
        for part in [
            "pod place-1592 (place-uid, created 2026-12-01T04:40:00Z)",
            "selects osbuild 20348, where private/ltsc2019",
            "app 127.0.0.1:5001/private/ltsc2019 (Index [\"10.0.17763.6293\"])",
            "runtimeClass (none) (Process isolation)",
            "imagePullSecrets [\"soak-pull\"]",
            "beta.kubernetes.io/osbuild In [\"20348\"]",
            "ImageOSUnknown: (the controller's note)",
        ] {
            assert!(v.text.contains(part), "{part:?} missing from {}", v.text);
        }
    }

    // The positive control: the same pod placed on its own build is no violation.
    #[test]
    fn a_pod_placed_where_its_image_runs_is_no_violation() {
        let mut state = State::default();
        state.observe_pod(&place_pod(None));
        state.observe_pod(&place_pod(Some(&["17763"])));
        let summary = judge_placement(&state);
        assert_eq!((summary.gated, summary.placed), (1, 1));
        assert!(summary.violations.is_empty(), "{:?}", summary.violations);
    }
}
