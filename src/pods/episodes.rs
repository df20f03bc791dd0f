//! The pod detector's bookkeeping of failure episodes, as a pure state machine: it takes what the watches
//! observed (a pod, its deletion, the start and end of a re-list, a sandbox failure) and returns the
//! effects to carry out (flag, clear, annotate). The driver (`pods/mod.rs`) does the I/O.
//!
//! An episode is one container (or the sandbox) of one pod failing with the mismatch, from the first
//! observation of the failure until the container runs again, the pod ends, or the pod is deleted. Each
//! episode is flagged exactly once, however often the kubelet updates the pod meanwhile. Only flagged pods
//! are remembered, so memory does not grow with the number of pods in the cluster.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::core::labels::LabelKeys;
use crate::node_info::NodeFacts;

use crate::core::mismatch::Variant;

use super::detect::{
    Failure, SANDBOX, SandboxFailure, active_failures_confirmed, main_image, not_ready_since,
    pulls_failing, sandbox_recovered,
};
use super::remedy::{annotation_value, finding_message};

/// The pod a finding is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    pub fn of(pod: &Pod) -> Option<Self> {
        Some(Self {
            namespace: pod.namespace()?,
            name: pod.metadata.name.clone()?,
            uid: pod.uid()?,
        })
    }
}

/// One flagged container (or the sandbox): what the gauge series and the annotation say.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub pod: PodRef,
    pub container: String,
    pub variant: Variant,
    pub node: String,
    pub osbuild: String,
    pub finding: serde_json::Value,
    /// When the failure became visible: where the detection latency starts ([`super::detect::Failure`]).
    pub visible_since: Option<Timestamp>,
}

impl Flag {
    /// The label values of `osbuild_pod_os_mismatch`.
    pub fn gauge_labels(&self) -> [&str; 6] {
        [
            &self.pod.namespace,
            &self.pod.name,
            &self.container,
            &self.node,
            &self.osbuild,
            self.variant.as_str(),
        ]
    }

    /// The label values of `osbuild_pod_os_mismatch_detections_total`.
    pub fn detection_labels(&self) -> [&str; 2] {
        [&self.pod.namespace, self.variant.as_str()]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A new episode: set the gauge, count it, and (leader) publish the Event with this message.
    Flagged { flag: Flag, message: String },
    /// An episode ended: remove its gauge series.
    Cleared { flag: Flag },
    /// (With `--annotate-pods`, leader) make the pod's annotation exactly these findings; empty: remove it.
    Annotate {
        pod: PodRef,
        findings: Vec<serde_json::Value>,
    },
}

#[derive(Debug)]
pub struct Episodes {
    keys: LabelKeys,
    /// pod uid → container → flag: the episodes in progress.
    flagged: HashMap<String, BTreeMap<String, Flag>>,
    /// Flagged pod uids (and those in `published_early`) seen during a re-list, plus the pods whose Event
    /// came in during it; the others were deleted while the watch was down.
    relist_seen: Option<HashSet<String>>,
    /// Episodes in progress whose Event is not known to be published (no leader when they began, or the
    /// write failed): the leader publishes them ([`Self::unreported`]).
    unreported: BTreeMap<(String, String), Unreported>,
    /// Pods with an Event of ours seen before this replica flagged them (the watches are not ordered),
    /// with the Event's latest time.
    published_early: HashMap<String, Option<Timestamp>>,
}

#[derive(Debug)]
struct Unreported {
    message: String,
    /// When the episode began, as the pod's status says ([`not_ready_since`]); `None`: not known.
    since: Option<Timestamp>,
}

/// How much earlier than the episode's start an Event of ours may be and still be the episode's: the
/// Event's time comes from the leader's clock, the start from the kubelet's (truncated to the second).
const CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(1);

/// Whether an Event of ours at `event` (its latest time) reports an episode that began at `since`. An
/// Event from before the episode began belongs to an earlier episode of the same pod (a restarted
/// replica's first list, or a re-list after 410, shows those too). Without either time it counts: the
/// Event is then most likely the current episode's, and reporting it again on every leader change would
/// duplicate it.
fn reports(event: Option<Timestamp>, since: Option<Timestamp>) -> bool {
    match (event, since) {
        (Some(event), Some(since)) => event >= since - CLOCK_SKEW,
        _ => true,
    }
}

impl Episodes {
    pub fn new(keys: LabelKeys) -> Self {
        Self {
            keys,
            flagged: HashMap::new(),
            relist_seen: None,
            unreported: BTreeMap::new(),
            published_early: HashMap::new(),
        }
    }

    /// An Event of ours about this pod was published (by any replica), last at `at`: the pod's episodes in
    /// progress that began before it are reported. Followers learn this from the Events watch, so a new
    /// leader does not report them again. Pod granularity: the leader publishes every container's Event as
    /// it flags them, together.
    pub fn published(&mut self, uid: &str, at: Option<Timestamp>) {
        if self.flagged.contains_key(uid) {
            self.unreported
                .retain(|(u, _), entry| u != uid || !reports(at, entry.since));
        } else {
            let latest = self.published_early.entry(uid.to_owned()).or_insert(at);
            *latest = (*latest).max(at);
            // Learnt during a re-list: as fresh as anything the re-list shows, so it survives its end.
            if let Some(seen) = self.relist_seen.as_mut() {
                seen.insert(uid.to_owned());
            }
        }
    }

    /// The Event of this episode was published by this replica.
    pub fn reported(&mut self, uid: &str, container: &str) {
        self.unreported
            .remove(&(uid.to_owned(), container.to_owned()));
    }

    /// Episodes in progress whose Event is not known to be published, with its message: what a (new)
    /// leader must still publish, so every episode gets its Event across leader changes.
    pub fn unreported(&self) -> Vec<(Flag, String)> {
        self.unreported
            .iter()
            .filter_map(|((uid, container), entry)| {
                let flag = self.flagged.get(uid)?.get(container)?;
                Some((flag.clone(), entry.message.clone()))
            })
            .collect()
    }

    /// Episodes in progress.
    pub fn len(&self) -> usize {
        self.flagged.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.flagged.is_empty()
    }

    /// The watch starts a (re-)list: every pod still there will be observed before [`Self::relist_done`].
    pub fn relist_started(&mut self) {
        self.relist_seen = Some(HashSet::new());
    }

    /// The (re-)list is complete: episodes of pods it did not contain are over (deleted meanwhile).
    pub fn relist_done(&mut self) -> Vec<Effect> {
        let seen = self.relist_seen.take().unwrap_or_default();
        let gone: Vec<String> = self
            .flagged
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        self.published_early.retain(|uid, _| seen.contains(uid));
        gone.iter().flat_map(|uid| self.clear_pod(uid)).collect()
    }

    /// The pod is gone: its episodes end (there is nothing left to annotate).
    pub fn pod_deleted(&mut self, uid: &str) -> Vec<Effect> {
        self.published_early.remove(uid);
        self.clear_pod(uid)
    }

    /// A pod as the watch sees it now, with the facts of the node it is bound to (`None`: unbound, or a
    /// node the index does not know).
    pub fn pod_observed(&mut self, pod: &Pod, facts: Option<&NodeFacts>) -> Vec<Effect> {
        self.pod_observed_confirmed(pod, facts, &[])
    }

    /// [`Self::pod_observed`], with the containers whose ambiguous pull error the driver confirmed as the
    /// mismatch from their images' platforms ([`super::ambiguous`]).
    pub fn pod_observed_confirmed(
        &mut self,
        pod: &Pod,
        facts: Option<&NodeFacts>,
        confirmed: &[String],
    ) -> Vec<Effect> {
        let Some(pod_ref) = PodRef::of(pod) else {
            return Vec::new();
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        // A terminating pod's episode is over: the user (or a rollout) is already replacing it.
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let windows_node = match (node, facts) {
            (Some(node), Some(f)) if f.windows => Some((node, f)),
            _ => None,
        };
        let failures = match windows_node {
            Some(_) if !terminating => active_failures_confirmed(pod, confirmed),
            _ => Vec::new(),
        };
        // A pod seen not failing: an Event seen for it without a time belongs to an episode that is over (the
        // next one needs its own). An Event with a time stays: the pod's status may be older than the Event
        // (the two watches are not ordered, and a re-list shows the status as it was), and the time alone
        // tells which episode it reports ([`reports`]). A pod on a node the index does not know yet is not
        // judged at all.
        let judged = node.is_none() || facts.is_some();
        if failures.is_empty() && judged && self.published_early.get(&pod_ref.uid) == Some(&None) {
            self.published_early.remove(&pod_ref.uid);
        }
        let still_pulling = if terminating {
            Vec::new()
        } else {
            pulls_failing(pod)
        };
        let recovered: Vec<String> = self
            .flagged
            .get(&pod_ref.uid)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|flag| {
                if flag.container == SANDBOX {
                    terminating || sandbox_recovered(pod)
                } else {
                    let failing = failures.iter().any(|f| f.container == flag.container);
                    // ImagePullBackOff no longer shows the pull error, but the episode goes on.
                    let backing_off =
                        flag.variant.is_pull_time() && still_pulling.contains(&flag.container);
                    !failing && !backing_off
                }
            })
            .map(|flag| flag.container.clone())
            .collect();
        let mut effects: Vec<Effect> = recovered
            .iter()
            .filter_map(|container| self.clear(&pod_ref.uid, container))
            .collect();
        if let Some(at) = windows_node {
            let since = not_ready_since(pod);
            for failure in failures {
                effects.extend(self.flag(&pod_ref, failure, at, since));
            }
        }
        if !effects.is_empty() {
            effects.push(self.annotation(&pod_ref));
        }
        // Only flagged pods, and pods with an Event seen early, matter to relist_done: remembering every pod
        // would keep one uid per pod of the cluster for the length of each re-list (~15 MiB at 150,000 pods).
        if (self.flagged.contains_key(&pod_ref.uid)
            || self.published_early.contains_key(&pod_ref.uid))
            && let Some(seen) = self.relist_seen.as_mut()
        {
            seen.insert(pod_ref.uid.clone());
        }
        effects
    }

    /// Whether this container of this pod is in an episode: the driver then need not read its image again.
    pub fn is_flagged(&self, uid: &str, container: &str) -> bool {
        self.flagged
            .get(uid)
            .is_some_and(|f| f.contains_key(container))
    }

    /// Whether the sandbox of this pod is already flagged: the driver then need not read the pod.
    pub fn sandbox_flagged(&self, uid: &str) -> bool {
        self.flagged
            .get(uid)
            .is_some_and(|f| f.contains_key(SANDBOX))
    }

    /// A `FailedCreatePodSandBox` Event carried the mismatch; `pod` is the pod as read after it, with its
    /// node's facts. The Event may be stale: the pod must be the one it names and not have come up since.
    pub fn sandbox_failed(
        &mut self,
        found: &SandboxFailure,
        pod: &Pod,
        facts: Option<&NodeFacts>,
    ) -> Vec<Effect> {
        let Some(pod_ref) = PodRef::of(pod) else {
            return Vec::new();
        };
        if found.uid.as_ref().is_some_and(|uid| *uid != pod_ref.uid) || sandbox_recovered(pod) {
            return Vec::new();
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            return Vec::new();
        };
        let Some(facts) = facts.filter(|f| f.windows) else {
            return Vec::new();
        };
        let failure = Failure {
            container: SANDBOX.to_owned(),
            image: main_image(pod),
            variant: found.variant,
            visible_since: found.visible_since,
        };
        let mut effects: Vec<Effect> = self
            .flag(&pod_ref, failure, (node, facts), not_ready_since(pod))
            .into_iter()
            .collect();
        if !effects.is_empty() {
            effects.push(self.annotation(&pod_ref));
        }
        effects
    }

    /// Starts an episode unless one is in progress for this container.
    fn flag(
        &mut self,
        pod: &PodRef,
        failure: Failure,
        (node, facts): (&str, &NodeFacts),
        since: Option<Timestamp>,
    ) -> Option<Effect> {
        let flags = self.flagged.entry(pod.uid.clone()).or_default();
        if flags.contains_key(&failure.container) {
            return None;
        }
        let flag = Flag {
            pod: pod.clone(),
            container: failure.container.clone(),
            variant: failure.variant,
            node: node.to_owned(),
            osbuild: facts.osbuild.clone().unwrap_or_default(),
            finding: annotation_value(&failure, node, facts),
            visible_since: failure.visible_since,
        };
        let message = finding_message(&failure, node, facts, &self.keys);
        let seen_early = self.published_early.get(&pod.uid);
        if !seen_early.is_some_and(|at| reports(*at, since)) {
            self.unreported.insert(
                (pod.uid.clone(), failure.container.clone()),
                Unreported {
                    message: message.clone(),
                    since,
                },
            );
        }
        flags.insert(failure.container, flag.clone());
        Some(Effect::Flagged { flag, message })
    }

    fn clear(&mut self, uid: &str, container: &str) -> Option<Effect> {
        let flags = self.flagged.get_mut(uid)?;
        let flag = flags.remove(container);
        if flags.is_empty() {
            self.flagged.remove(uid);
            self.published_early.remove(uid);
        }
        self.unreported
            .remove(&(uid.to_owned(), container.to_owned()));
        flag.map(|flag| Effect::Cleared { flag })
    }

    fn clear_pod(&mut self, uid: &str) -> Vec<Effect> {
        self.unreported.retain(|(u, _), _| u != uid);
        self.published_early.remove(uid);
        self.flagged
            .remove(uid)
            .into_iter()
            .flat_map(BTreeMap::into_values)
            .map(|flag| Effect::Cleared { flag })
            .collect()
    }

    fn annotation(&self, pod: &PodRef) -> Effect {
        Effect::Annotate {
            pod: pod.clone(),
            findings: self
                .flagged
                .get(&pod.uid)
                .into_iter()
                .flat_map(BTreeMap::values)
                .map(|f| f.finding.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::version::WindowsVersion;
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use serde_json::json;

    use super::super::detect::{event_last_seen, sandbox_failure};

    // The seed's `kubectl describe` (Docker era) and containerd's message (DOMAIN.md §4).
    const DOCKER: &str = "container 5b41 encountered an error during CreateContainer: failure in a Windows system call: The operating system of the container does not match the operating system of the host. (0xc0370101)";
    const CONTAINERD: &str = "failed to create containerd task: failed to create shim task: hcs::CreateComputeSystem app: The container operating system does not match the host operating system.: unknown";

    fn ws2019() -> NodeFacts {
        NodeFacts {
            windows: true,
            version: Some(WindowsVersion::new(17763, Some(3887))),
            osbuild: Some("17763".into()),
            release: Some("ltsc2019"),
            process_isolation_builds: vec![17763],
        }
    }

    fn linux() -> NodeFacts {
        NodeFacts {
            windows: false,
            version: None,
            osbuild: None,
            release: None,
            process_isolation_builds: Vec::new(),
        }
    }

    #[allow(clippy::needless_pass_by_value)] // called with json! literals
    fn pod(uid: &str, statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("pod-{uid}"), "namespace": "shop", "uid": uid},
            "spec": {
                "nodeName": "win-1",
                "initContainers": [{"name": "init", "image": "example/init:ltsc2019"}],
                "containers": [{"name": "app", "image": "example/app:ltsc2022"}]
            },
            "status": statuses
        }))
        .unwrap()
    }

    fn crash_looping(uid: &str) -> Pod {
        pod(
            uid,
            json!({"containerStatuses": [{
                "name": "app", "image": "sha256:abc", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"reason": "ContainerCannotRun", "exitCode": 128, "message": DOCKER}}
            }]}),
        )
    }

    fn running(uid: &str) -> Pod {
        pod(
            uid,
            json!({"phase": "Running", "containerStatuses": [{
                "name": "app", "image": "x", "imageID": "", "ready": true, "restartCount": 4,
                "state": {"running": {"startedAt": "2026-11-23T00:00:00Z"}},
                "lastState": {"terminated": {"reason": "ContainerCannotRun", "exitCode": 128, "message": DOCKER}}
            }]}),
        )
    }

    fn sandbox_event(uid: &str) -> SandboxFailure {
        let event: CoreEvent = serde_json::from_value(json!({
            "metadata": {"name": "e", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": format!("pod-{uid}"), "namespace": "shop", "uid": uid},
            "reason": "FailedCreatePodSandBox", "type": "Warning",
            "message": format!("Failed to create pod sandbox: rpc error: code = Unknown desc = {CONTAINERD}")
        }))
        .unwrap();
        sandbox_failure(&event).unwrap()
    }

    fn kinds(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Flagged { flag, .. } => format!("flag {}", flag.container),
                Effect::Cleared { flag } => format!("clear {}", flag.container),
                Effect::Annotate { findings, .. } => format!("annotate {}", findings.len()),
            })
            .collect()
    }

    fn episodes() -> Episodes {
        Episodes::new(LabelKeys::default())
    }

    #[test]
    fn flags_an_episode_once_however_often_the_pod_is_updated() {
        let mut e = episodes();
        let effects = e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert_eq!(kinds(&effects), ["flag app", "annotate 1"]);
        let Effect::Flagged { flag, message } = &effects[0] else {
            unreachable!()
        };
        assert_eq!(
            flag.gauge_labels(),
            ["shop", "pod-u1", "app", "win-1", "17763", "hcs-0xc0370101"]
        );
        assert_eq!(flag.detection_labels(), ["shop", "hcs-0xc0370101"]);
        assert!(
            message.contains("example/app:ltsc2022") && message.contains("Fix:"),
            "{message}"
        );
        for _ in 0..3 {
            assert!(
                e.pod_observed(&crash_looping("u1"), Some(&ws2019()))
                    .is_empty()
            );
        }
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn recovery_ends_the_episode_and_a_new_failure_is_a_new_episode() {
        let mut e = episodes();
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        let effects = e.pod_observed(&running("u1"), Some(&ws2019()));
        assert_eq!(kinds(&effects), ["clear app", "annotate 0"]);
        assert!(e.is_empty());
        let again = e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert_eq!(kinds(&again), ["flag app", "annotate 1"]);
    }

    fn unreported(e: &Episodes) -> Vec<String> {
        e.unreported()
            .iter()
            .map(|(f, _)| format!("{} {}", f.pod.uid, f.container))
            .collect()
    }

    // Found by the chaos soak (scripts/soak): an episode that began while no replica led (the leader was
    // killed or paused) was never reported, because only its first observation published the Event.
    #[test]
    fn an_episode_flagged_without_a_leader_stays_unreported_until_published() {
        let mut e = episodes();
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert_eq!(unreported(&e), ["u1 app"], "no replica published its Event");
        let (flag, message) = &e.unreported()[0];
        assert!(message.contains("app"), "{message}");
        e.reported(&flag.pod.uid.clone(), "app");
        assert!(unreported(&e).is_empty());
        assert_eq!(e.len(), 1, "the episode goes on, reported");
    }

    #[test]
    fn a_followers_episode_is_reported_once_the_leaders_event_is_seen_in_either_order() {
        // The leader's Event after this replica flagged the pod.
        let mut e = episodes();
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        e.published("u1", None);
        assert!(unreported(&e).is_empty());
        // The leader's Event before this replica saw the failure (the two watches are not ordered).
        let mut e = episodes();
        e.pod_observed(&pod("u2", json!({})), Some(&ws2019()));
        e.published("u2", None);
        e.pod_observed(&crash_looping("u2"), Some(&ws2019()));
        assert!(unreported(&e).is_empty());
    }

    #[test]
    fn an_event_of_a_finished_episode_does_not_report_the_next() {
        let mut e = episodes();
        e.published("u1", None); // an old Event, e.g. seen in the first list after a restart
        e.pod_observed(&running("u1"), Some(&ws2019()));
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert_eq!(unreported(&e), ["u1 app"]);
        // Recovery ends the episode and forgets it; the next one is unreported again.
        e.reported("u1", "app");
        e.pod_observed(&running("u1"), Some(&ws2019()));
        assert!(unreported(&e).is_empty() && e.is_empty());
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert_eq!(unreported(&e), ["u1 app"]);
        e.pod_deleted("u1");
        assert!(
            unreported(&e).is_empty(),
            "a deleted pod has nothing to report"
        );
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// A crash-looping pod whose containers stopped being ready at `since` (the kubelet's condition).
    fn failing_since(uid: &str, since: &str) -> Pod {
        let mut pod = crash_looping(uid);
        pod.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({"type": "ContainersReady", "status": "False",
                "reason": "ContainersNotReady", "lastTransitionTime": since}))
            .unwrap(),
        ]);
        pod
    }

    // Found by the chaos soak (pod-437): a replica started (or re-listing after 410) in a pod's second
    // episode sees the first episode's Event in its first list of Events, and took it for the second's,
    // so no replica ever published the second episode's Event. The Event's time orders it.
    #[test]
    fn an_event_from_before_the_episode_began_reports_an_earlier_episode_in_either_order() {
        // Positive control: the episode's own Event (after it began) reports it.
        let mut e = episodes();
        e.pod_observed(
            &failing_since("u1", "2026-11-30T10:00:00Z"),
            Some(&ws2019()),
        );
        e.published("u1", Some(at("2026-11-30T10:00:00.300Z")));
        assert!(unreported(&e).is_empty());
        // The first episode's Event, seen after this replica flagged the second episode.
        let mut e = episodes();
        e.pod_observed(
            &failing_since("u1", "2026-11-30T10:05:00Z"),
            Some(&ws2019()),
        );
        e.published("u1", Some(at("2026-11-30T10:00:00.300Z")));
        assert_eq!(unreported(&e), ["u1 app"]);
        // ... and seen before (the two watches are not ordered).
        let mut e = episodes();
        e.published("u1", Some(at("2026-11-30T10:00:00.300Z")));
        e.pod_observed(
            &failing_since("u1", "2026-11-30T10:05:00Z"),
            Some(&ws2019()),
        );
        assert_eq!(unreported(&e), ["u1 app"]);
        // A later Event of the same pod (the second episode's) then reports it.
        e.published("u1", Some(at("2026-11-30T10:05:00.200Z")));
        assert!(unreported(&e).is_empty());
    }

    // Found by the chaos soak (seed 1796106101): a new leader published a second Event for 13 episodes its
    // predecessor had reported. This replica saw the leader's Event before its pod watch showed the failure,
    // and the pod watch's re-list (after a 410) ended in between: the re-list kept only flagged pods' Events.
    #[test]
    fn an_event_seen_early_survives_a_relist_that_ends_before_the_failure_is_seen() {
        let event = Some(at("2026-11-30T10:00:00.300Z"));
        let observe_around_a_relist = |e: &mut Episodes, publish: bool| {
            e.relist_started();
            e.pod_observed(&pod("u1", json!({})), Some(&ws2019()));
            if publish {
                e.published("u1", event);
            }
            e.relist_done();
            e.pod_observed(
                &failing_since("u1", "2026-11-30T10:00:00Z"),
                Some(&ws2019()),
            );
        };
        // Positive control: without the leader's Event the episode is this replica's to report.
        let mut e = episodes();
        observe_around_a_relist(&mut e, false);
        assert_eq!(unreported(&e), ["u1 app"]);
        let mut e = episodes();
        observe_around_a_relist(&mut e, true);
        assert!(unreported(&e).is_empty(), "{:?}", unreported(&e));
        // Seen before the re-list began, the pod in the re-list with a status older than the Event: kept too.
        let mut e = episodes();
        e.published("u1", event);
        e.relist_started();
        e.pod_observed(&pod("u1", json!({})), Some(&ws2019()));
        e.relist_done();
        e.pod_observed(
            &failing_since("u1", "2026-11-30T10:00:00Z"),
            Some(&ws2019()),
        );
        assert!(unreported(&e).is_empty());
        // A pod missing from the re-list was deleted meanwhile: its Event is forgotten.
        let mut e = episodes();
        e.published("u1", event);
        e.relist_started();
        e.relist_done();
        e.pod_observed(
            &failing_since("u1", "2026-11-30T10:00:00Z"),
            Some(&ws2019()),
        );
        assert_eq!(unreported(&e), ["u1 app"]);
    }

    #[test]
    fn an_event_seen_early_survives_the_pod_seen_on_a_node_not_yet_indexed() {
        // Without a time the Event is forgotten when the pod is seen not failing; a pod whose node the index
        // does not know yet is not seen either way.
        let mut e = episodes();
        e.published("u1", None);
        e.pod_observed(&running("u1"), None);
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert!(unreported(&e).is_empty(), "{:?}", unreported(&e));
        // Positive control: the same pod seen running on a known node ends what the Event reported.
        let mut e = episodes();
        e.published("u1", None);
        e.pod_observed(&running("u1"), Some(&ws2019()));
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert_eq!(unreported(&e), ["u1 app"]);
    }

    #[test]
    fn an_event_within_the_clock_skew_of_the_start_reports_the_episode() {
        // The kubelet's clock may run a little ahead of the leader's, and its times are whole seconds.
        let mut e = episodes();
        e.published("u1", Some(at("2026-11-30T10:04:59.500Z")));
        e.pod_observed(
            &failing_since("u1", "2026-11-30T10:05:00Z"),
            Some(&ws2019()),
        );
        assert!(unreported(&e).is_empty());
    }

    #[test]
    fn status_conditions_and_event_times_are_read_as_the_api_server_serves_them() {
        let pod = failing_since("u1", "2026-11-30T10:05:00Z");
        assert_eq!(not_ready_since(&pod), Some(at("2026-11-30T10:05:00Z")));
        let mut ready = pod.clone();
        ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "True".into();
        assert_eq!(not_ready_since(&ready), None, "ready: no episode start");
        // A core/v1 view of an events.k8s.io Event repeated by the recorder (series): the latest time wins.
        let event: CoreEvent = serde_json::from_value(json!({
            "metadata": {"name": "e", "namespace": "shop", "creationTimestamp": "2026-11-30T10:00:00Z"},
            "involvedObject": {"kind": "Pod", "name": "pod-u1", "uid": "u1"},
            "eventTime": "2026-11-30T10:00:00.100000Z",
            "series": {"count": 2, "lastObservedTime": "2026-11-30T10:05:01.000000Z"}
        }))
        .unwrap();
        assert_eq!(event_last_seen(&event), Some(at("2026-11-30T10:05:01Z")));
    }

    #[test]
    fn positive_control_then_no_flag_off_windows_unbound_or_terminating() {
        assert!(
            !episodes()
                .pod_observed(&crash_looping("u1"), Some(&ws2019()))
                .is_empty()
        );
        let mut e = episodes();
        assert!(
            e.pod_observed(&crash_looping("u1"), Some(&linux()))
                .is_empty()
        );
        assert!(
            e.pod_observed(&crash_looping("u1"), None).is_empty(),
            "unknown node"
        );
        let mut unbound = crash_looping("u2");
        unbound.spec.as_mut().unwrap().node_name = None;
        assert!(e.pod_observed(&unbound, Some(&ws2019())).is_empty());
        let mut terminating = crash_looping("u3");
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(e.pod_observed(&terminating, Some(&ws2019())).is_empty());
        assert!(e.is_empty());
    }

    #[test]
    fn a_terminating_pod_ends_its_episode() {
        let mut e = episodes();
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        let mut terminating = crash_looping("u1");
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(
            kinds(&e.pod_observed(&terminating, Some(&ws2019()))),
            ["clear app", "annotate 0"]
        );
    }

    #[test]
    fn deletion_clears_without_annotating() {
        let mut e = episodes();
        e.pod_observed(&crash_looping("u1"), Some(&ws2019()));
        assert_eq!(kinds(&e.pod_deleted("u1")), ["clear app"]);
        assert!(e.pod_deleted("u1").is_empty(), "nothing left");
    }

    #[test]
    fn relist_clears_pods_deleted_while_the_watch_was_down_and_keeps_the_rest() {
        let mut e = episodes();
        e.pod_observed(&crash_looping("kept"), Some(&ws2019()));
        e.pod_observed(&crash_looping("gone"), Some(&ws2019()));
        assert_eq!(e.len(), 2);
        e.relist_started();
        // The re-list sees "kept", still failing: no new Event (same episode).
        assert!(
            e.pod_observed(&crash_looping("kept"), Some(&ws2019()))
                .is_empty()
        );
        let effects = e.relist_done();
        assert_eq!(kinds(&effects), ["clear app"]);
        let Effect::Cleared { flag } = &effects[0] else {
            unreachable!()
        };
        assert_eq!(flag.pod.uid, "gone");
        assert_eq!(e.len(), 1);
        // A re-list that sees everything clears nothing.
        e.relist_started();
        e.pod_observed(&crash_looping("kept"), Some(&ws2019()));
        assert!(e.relist_done().is_empty());
    }

    #[test]
    fn sandbox_failures_flag_once_and_recover_when_the_pod_runs() {
        let mut e = episodes();
        let found = sandbox_event("u1");
        let creating = pod("u1", json!({"phase": "Pending"}));
        let effects = e.sandbox_failed(&found, &creating, Some(&ws2019()));
        assert_eq!(kinds(&effects), ["flag (sandbox)", "annotate 1"]);
        assert!(e.sandbox_flagged("u1"));
        assert!(
            e.sandbox_failed(&found, &creating, Some(&ws2019()))
                .is_empty()
        );
        // Pod updates while it is still creating do not end the sandbox episode.
        assert!(e.pod_observed(&creating, Some(&ws2019())).is_empty());
        assert_eq!(
            kinds(&e.pod_observed(&running("u1"), Some(&ws2019()))),
            ["clear (sandbox)", "annotate 0"]
        );
    }

    #[test]
    fn stale_sandbox_events_are_ignored() {
        let mut e = episodes();
        let found = sandbox_event("old-uid");
        let recreated = pod("new-uid", json!({"phase": "Pending"}));
        assert!(
            e.sandbox_failed(&found, &recreated, Some(&ws2019()))
                .is_empty(),
            "another pod"
        );
        let found = sandbox_event("u1");
        assert!(
            e.sandbox_failed(&found, &running("u1"), Some(&ws2019()))
                .is_empty(),
            "came up since"
        );
        assert!(
            e.sandbox_failed(&found, &pod("u1", json!({})), Some(&linux()))
                .is_empty(),
            "not a Windows node"
        );
        // Positive control: the same Event for the pod as it is still creating does flag.
        assert!(
            !e.sandbox_failed(&found, &pod("u1", json!({})), Some(&ws2019()))
                .is_empty()
        );
    }

    /// Docker's pull error in the kubelet's `ErrImagePull`, then `ImagePullBackOff` (which carries only
    /// "Back-off pulling image"): one episode throughout. Message from DOMAIN.md §4 and
    /// https://github.com/docker-archive-public/docker.kitematic/issues/5236.
    #[test]
    fn a_pull_time_episode_lasts_through_image_pull_back_off() {
        let waiting = |reason: &str, message: &str| {
            pod(
                "u1",
                json!({"phase": "Pending", "containerStatuses": [{
                    "name": "app", "image": "example/app:ltsc2022", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}}
                }]}),
            )
        };
        let pull_error = waiting(
            "ErrImagePull",
            "rpc error: code = Unknown desc = Error response from daemon: no matching manifest for windows/amd64 10.0.17763 in the manifest list entries",
        );
        let back_off = waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"example/app:ltsc2022\"",
        );
        let mut e = episodes();
        let effects = e.pod_observed(&pull_error, Some(&ws2019()));
        assert_eq!(kinds(&effects), ["flag app", "annotate 1"]);
        let Effect::Flagged { message, .. } = &effects[0] else {
            unreachable!()
        };
        assert!(
            message.contains("cannot be pulled for node win-1"),
            "{message}"
        );
        assert!(
            e.pod_observed(&back_off, Some(&ws2019())).is_empty(),
            "same episode"
        );
        assert!(
            e.pod_observed(&pull_error, Some(&ws2019())).is_empty(),
            "same episode"
        );
        // Fixed (e.g. the pod moved to a matching image): the container runs, the episode ends.
        assert_eq!(
            kinds(&e.pod_observed(&running("u1"), Some(&ws2019()))),
            ["clear app", "annotate 0"]
        );
        // A crash-loop look-alike does not keep a runtime episode alive through a pull back-off.
        let mut e = episodes();
        e.pod_observed(&crash_looping("u2"), Some(&ws2019()));
        let mut backing_off = back_off.clone();
        backing_off.metadata.uid = Some("u2".into());
        backing_off.metadata.name = Some("pod-u2".into());
        assert_eq!(
            kinds(&e.pod_observed(&backing_off, Some(&ws2019()))),
            ["clear app", "annotate 0"]
        );
    }

    #[test]
    fn the_annotation_lists_every_finding_of_the_pod() {
        let mut e = episodes();
        let both = pod(
            "u1",
            json!({
                "initContainerStatuses": [{
                    "name": "init", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "RunContainerError", "message": CONTAINERD}}
                }],
                "containerStatuses": [{
                    "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "ContainerCannotRun", "exitCode": 128, "message": DOCKER}}
                }]
            }),
        );
        let effects = e.pod_observed(&both, Some(&ws2019()));
        assert_eq!(kinds(&effects), ["flag init", "flag app", "annotate 2"]);
        let Some(Effect::Annotate { findings, .. }) = effects.last() else {
            unreachable!()
        };
        let containers: Vec<&str> = findings
            .iter()
            .filter_map(|f| f["container"].as_str())
            .collect();
        assert_eq!(containers, ["app", "init"]);
    }
}
