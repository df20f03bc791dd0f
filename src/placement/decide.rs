//! What to do with one gated pod, given what the registry said about its images and which Windows hosts
//! the cluster has. Pure: no I/O, no clock (the driver says whether the deadline has passed).
//!
//! - Every Windows image read: require `osbuild In [values that run every image]`, added to each existing
//!   required nodeSelectorTerm (or as the one term), and remove our gate; a Normal `Placed` Event. The
//!   values are the catalog's hosts that run the images plus the cluster's own hosts that do.
//! - No Windows image (a Linux image on a pod that asked for Windows): just remove the gate.
//! - No node of the cluster runs it: place it all the same (it waits Pending for one) and warn
//!   `NoCompatibleNode` with the build it needs.
//! - The registry failed: wait and retry while the error may pass and the deadline has not; otherwise
//!   remove the gate without affinity and warn `ImageOSUnknown` with the image and the error.

use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod};
use serde_json::{Value, json};

use crate::core::runs_on::{Isolation, RunsOn, Verdict, common_values, host_verdict, runs_on};
use crate::core::version::WindowsVersion;
use crate::registry::{RegistryError, ResolvedImage};

/// The scheduling gate the admission policy adds and only this loop removes.
pub const GATE: &str = "osbuild-controller.io/image-os";

/// Event reasons.
pub const PLACED: &str = "Placed";
pub const NO_COMPATIBLE_NODE: &str = "NoCompatibleNode";
pub const IMAGE_OS_UNKNOWN: &str = "ImageOSUnknown";

/// How a gated pod was released: the `outcome` label of `osbuild_placements_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Node affinity added, and some node of the cluster runs the image.
    Placed,
    /// Node affinity added, but no node of the cluster runs the image yet.
    NoCompatibleNode,
    /// No Windows image: the gate removed, nothing added.
    NotWindows,
    /// The registry could not say (error, deadline) or the images' hosts are unknown: gate removed only.
    ImageOsUnknown,
}

impl Outcome {
    pub const ALL: [Self; 4] = [
        Self::Placed,
        Self::NoCompatibleNode,
        Self::NotWindows,
        Self::ImageOsUnknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::NoCompatibleNode => "no-compatible-node",
            Self::NotWindows => "not-windows",
            Self::ImageOsUnknown => "image-os-unknown",
        }
    }
}

/// One image of the pod and what its registry said.
#[derive(Debug, Clone)]
pub struct ImageResult {
    pub image: String,
    pub result: Result<Arc<ResolvedImage>, RegistryError>,
}

/// A Windows node of the cluster, from the Node index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHost {
    pub name: String,
    pub version: WindowsVersion,
    /// Its osbuild label value (`BUILD`, or `BUILD.REVISION` before 1709).
    pub osbuild: String,
}

/// What the loop knows when it decides.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub images: &'a [ImageResult],
    pub isolation: Isolation,
    pub hosts: &'a [ClusterHost],
    /// The pod has been gated longer than `--placement-deadline`.
    pub deadline_passed: bool,
    /// Reads of the pod's own objects that failed in a way that may pass (throttled, unreachable, a server
    /// error): without them the decision may be wrong, so they are retried like a registry timeout.
    pub unread: Unread<'a>,
    /// The osbuild label key (`--osbuild-label`).
    pub osbuild_key: &'a str,
}

/// What could not be read about the pod this time, and may be readable next time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unread<'a> {
    /// Its pull secrets or its ServiceAccount (`secret NAME: CATEGORY`). Without them a private image
    /// answers "unauthorized", which no retry of the registry alone can mend.
    pub pull_secrets: &'a [String],
    /// Its RuntimeClass: the isolation (process or Hyper-V) decides which hosts run an image.
    pub runtime_class: Option<&'a str>,
}

/// The decision for one gated pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Our gate is not on the pod (any more): nothing to do.
    NotGated,
    /// Registry errors that may pass: ask again later.
    Retry { errors: Vec<String> },
    /// Patch the pod (a merge patch) and report.
    Release(Release),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// A merge patch: the resourceVersion read, node affinity (when placed), the gates without ours.
    pub patch: Value,
    pub outcome: Outcome,
    /// The osbuild values required, when affinity is added.
    pub values: Option<Vec<String>>,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

pub fn decide(inputs: &Inputs<'_>) -> Decision {
    if !has_gate(inputs.pod) {
        return Decision::NotGated;
    }
    let failed: Vec<&RegistryError> = inputs
        .images
        .iter()
        .filter_map(|i| i.result.as_ref().err())
        .collect();
    // The pull secrets matter only when an image could not be read; the RuntimeClass always does.
    let unread: Vec<String> = inputs
        .unread
        .runtime_class
        .map(|class| format!("runtimeclass {class}"))
        .into_iter()
        .chain(
            inputs
                .unread
                .pull_secrets
                .iter()
                .filter(|_| !failed.is_empty())
                .cloned(),
        )
        .collect();
    let may_pass = !unread.is_empty() || failed.iter().any(|e| e.kind.is_transient());
    if may_pass && !inputs.deadline_passed {
        let errors = failed
            .iter()
            .map(ToString::to_string)
            .chain(unread)
            .collect();
        return Decision::Retry { errors };
    }
    if !failed.is_empty() {
        let errors: Vec<String> = failed.iter().map(ToString::to_string).collect();
        let why = if inputs.deadline_passed {
            "the placement deadline passed"
        } else {
            "retrying cannot help"
        };
        return Decision::Release(release(
            inputs,
            None,
            Outcome::ImageOsUnknown,
            format!(
                "cannot read the image's OS version from its registry ({}): {why}; the pod is scheduled without a host constraint and may fail to start on a host of another Windows build",
                errors.join("; ")
            ),
        ));
    }
    let resolved: Vec<(&str, RunsOn)> = inputs
        .images
        .iter()
        .filter_map(|i| {
            let r = i.result.as_ref().ok()?;
            Some((i.image.as_str(), runs_on(&r.platforms, inputs.isolation)))
        })
        .collect();
    let Some(mut values) = common_values(resolved.iter().map(|(_, r)| r)) else {
        return Decision::Release(release(
            inputs,
            None,
            Outcome::NotWindows,
            "no image of the pod is a Windows image: the scheduling gate is removed, no host constraint added"
                .to_owned(),
        ));
    };
    if let Some((image, r)) = resolved.iter().find(|(_, r)| r.windows && r.incomplete) {
        return Decision::Release(release(
            inputs,
            None,
            Outcome::ImageOsUnknown,
            format!(
                "{image}: which hosts run it is not known ({}); the pod is scheduled without a host constraint",
                r.notes.join("; ")
            ),
        ));
    }
    // Hosts of the cluster the catalog does not know (a newer build) count when they run every image.
    for host in inputs.hosts {
        let runs_all = inputs
            .images
            .iter()
            .filter_map(|i| i.result.as_ref().ok())
            .filter(|r| r.platforms.has_windows())
            .all(|r| host_verdict(&r.platforms, host.version, inputs.isolation) == Verdict::Runs);
        if runs_all && !values.contains(&host.osbuild) {
            values.push(host.osbuild.clone());
        }
    }
    values.sort_by_key(|v| sort_key(v));
    let compatible: Vec<&str> = inputs
        .hosts
        .iter()
        .filter(|h| values.contains(&h.osbuild))
        .map(|h| h.name.as_str())
        .collect();
    let mut note = String::new();
    for (image, r) in resolved.iter().filter(|(_, r)| r.windows) {
        let _ = write!(note, "{image} → {}; ", builds(r));
    }
    let isolation = match inputs.isolation {
        Isolation::HyperV => " (Hyper-V isolation)",
        Isolation::Process => "",
    };
    if values.is_empty() || compatible.is_empty() {
        let needed = if values.is_empty() {
            "no Windows build runs every image of the pod".to_owned()
        } else {
            format!("{} In [{}]", inputs.osbuild_key, values.join(", "))
        };
        let _ = write!(
            note,
            "no node of the cluster runs it{isolation}: it needs {needed}; the pod waits Pending until such a node joins"
        );
        return Decision::Release(release(
            inputs,
            Some(values),
            Outcome::NoCompatibleNode,
            note,
        ));
    }
    let _ = write!(
        note,
        "hosts with {} in [{}]{isolation}: {} node(s) of the cluster, e.g. {}",
        inputs.osbuild_key,
        values.join(", "),
        compatible.len(),
        compatible
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Decision::Release(release(inputs, Some(values), Outcome::Placed, note))
}

/// The builds an image was published for, e.g. "build 20348" or "builds 17763, 20348".
fn builds(r: &RunsOn) -> String {
    if r.values.is_empty() {
        return "no host".to_owned();
    }
    format!("runs on osbuild {}", r.values.join(", "))
}

/// Numeric order of osbuild values ("14393.1715" < "17763" < "20348").
fn sort_key(value: &str) -> (u32, u32) {
    let mut parts = value
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    (
        parts.next().unwrap_or(u32::MAX),
        parts.next().unwrap_or_default(),
    )
}

/// The release when the API server refused our node affinity (a pod shape it will not narrow): the gate
/// goes without it, so the pod is never stranded, and a Warning says why.
pub fn release_without_affinity(pod: &Pod, refusal: &str) -> Release {
    Release {
        patch: release_patch(pod, "", None),
        outcome: Outcome::ImageOsUnknown,
        values: None,
        warning: true,
        reason: IMAGE_OS_UNKNOWN,
        note: format!(
            "the API server refused the node affinity for this pod ({refusal}); it is scheduled without a host constraint"
        ),
    }
}

pub fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == GATE))
}

fn release(
    inputs: &Inputs<'_>,
    values: Option<Vec<String>>,
    outcome: Outcome,
    note: String,
) -> Release {
    let (warning, reason) = match outcome {
        Outcome::Placed | Outcome::NotWindows => (false, PLACED),
        Outcome::NoCompatibleNode => (true, NO_COMPATIBLE_NODE),
        Outcome::ImageOsUnknown => (true, IMAGE_OS_UNKNOWN),
    };
    Release {
        patch: release_patch(inputs.pod, inputs.osbuild_key, values.as_deref()),
        outcome,
        values,
        warning,
        reason,
        note,
    }
}

/// The merge patch that releases the pod: the resourceVersion read (so a pod changed since is read again,
/// never overwritten: 409), the required node affinity with `key In values` (with no values: `key Exists`
/// and `key DoesNotExist`, which no node matches) added to each existing term
/// (the only change the API server accepts on a gated pod's affinity) or as the one term, and the
/// scheduling gates without ours (other gates stay, in their order). Lists are replaced whole by a merge
/// patch, so each carries everything it keeps.
pub fn release_patch(pod: &Pod, key: &str, values: Option<&[String]>) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let gates: Vec<Value> = spec
        .scheduling_gates
        .unwrap_or_default()
        .into_iter()
        .filter(|g| g.name != GATE)
        .map(|g| json!({"name": g.name}))
        .collect();
    let mut patch = json!({
        "metadata": {"resourceVersion": pod.metadata.resource_version.clone().unwrap_or_default()},
        "spec": {"schedulingGates": gates},
    });
    if let Some(values) = values {
        let requirements = if values.is_empty() {
            // No Windows build runs every image (e.g. an ltsc2019 init container beside an ltsc2022 app):
            // the API server refuses `In` without values, so the pod gets the pair that no node matches,
            // and waits Pending as NoCompatibleNode says, instead of starting where it cannot run.
            ["Exists", "DoesNotExist"]
                .map(|operator| NodeSelectorRequirement {
                    key: key.to_owned(),
                    operator: operator.to_owned(),
                    values: None,
                })
                .to_vec()
        } else {
            vec![NodeSelectorRequirement {
                key: key.to_owned(),
                operator: "In".to_owned(),
                values: Some(values.to_vec()),
            }]
        };
        let mut terms: Vec<NodeSelectorTerm> = spec
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .map(|r| r.node_selector_terms)
            .unwrap_or_default();
        if terms.is_empty() {
            terms.push(NodeSelectorTerm::default());
        }
        for term in &mut terms {
            term.match_expressions
                .get_or_insert_with(Vec::new)
                .extend(requirements.iter().cloned());
        }
        patch["spec"]["affinity"] = json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }});
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::platform::{ImageKind, ImagePlatforms, Platform, VersionSource};
    use crate::registry::ErrorKind;

    const KEY: &str = "beta.kubernetes.io/osbuild";

    #[allow(clippy::needless_pass_by_value)]
    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "42"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn gated() -> Pod {
        pod(json!({
            "containers": [{"name": "c", "image": "reg/app:1"}],
            "nodeSelector": {"kubernetes.io/os": "windows"},
            "schedulingGates": [{"name": "example.com/other"}, {"name": GATE}],
        }))
    }

    fn image(kind: ImageKind, entries: &[(&str, Option<&str>)]) -> Arc<ResolvedImage> {
        Arc::new(ResolvedImage {
            image: "reg/app:1".into(),
            reference: "reg/app:1".into(),
            digest: "sha256:0".into(),
            platforms: ImagePlatforms {
                kind,
                platforms: entries
                    .iter()
                    .map(|(os, v)| Platform {
                        os: (*os).into(),
                        architecture: "amd64".into(),
                        os_version: v.map(Into::into),
                        version_source: VersionSource::Index,
                        matches_any_host: false,
                        digest: None,
                    })
                    .collect(),
            },
        })
    }

    fn ok(resolved: Arc<ResolvedImage>) -> ImageResult {
        ImageResult {
            image: "reg/app:1".into(),
            result: Ok(resolved),
        }
    }

    fn failed(kind: ErrorKind) -> ImageResult {
        ImageResult {
            image: "reg/app:1".into(),
            result: Err(RegistryError::new(kind, "reg/app:1", "HTTP 401")),
        }
    }

    fn host(name: &str, build: u32) -> ClusterHost {
        ClusterHost {
            name: name.into(),
            version: WindowsVersion::new(build, Some(1)),
            osbuild: build.to_string(),
        }
    }

    fn hosts() -> Vec<ClusterHost> {
        vec![
            host("ws2019", 17763),
            host("ws2022", 20348),
            host("ws2025", 26100),
        ]
    }

    fn decide_with(
        pod: &Pod,
        images: &[ImageResult],
        hosts: &[ClusterHost],
        late: bool,
    ) -> Decision {
        decide_unread_on(pod, images, hosts, Unread::default(), late)
    }

    fn released(d: Decision) -> Release {
        match d {
            Decision::Release(r) => r,
            other => panic!("expected a release, got {other:?}"),
        }
    }

    /// The pod after the merge patch (RFC 7386), as the API server would store it.
    fn patched(pod: &Pod, patch: &Value) -> Value {
        fn merge(target: &mut Value, patch: &Value) {
            match patch {
                Value::Object(fields) => {
                    if !target.is_object() {
                        *target = json!({});
                    }
                    for (k, v) in fields {
                        if v.is_null() {
                            target.as_object_mut().unwrap().remove(k);
                        } else {
                            merge(
                                target
                                    .as_object_mut()
                                    .unwrap()
                                    .entry(k.clone())
                                    .or_insert(Value::Null),
                                v,
                            );
                        }
                    }
                }
                other => *target = other.clone(),
            }
        }
        let mut doc = serde_json::to_value(pod).unwrap();
        merge(&mut doc, patch);
        doc
    }

    fn terms(doc: &Value) -> Value {
        doc["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"]
            .clone()
    }

    #[test]
    fn an_ltsc2022_image_is_placed_on_its_hosts_and_only_our_gate_goes() {
        let pod = gated();
        let images = [ok(image(
            ImageKind::Index,
            &[("windows", Some("10.0.20348.2655"))],
        ))];
        let r = released(decide_with(&pod, &images, &hosts(), false));
        assert_eq!(r.outcome, Outcome::Placed);
        assert_eq!(r.reason, PLACED);
        assert!(!r.warning);
        let values = ["20348", "22000", "22621", "22631", "25398", "26100"];
        assert_eq!(r.values.as_deref().unwrap(), values);
        assert!(
            r.note.contains("ws2022") && r.note.contains("2 node(s)"),
            "{}",
            r.note
        );
        let doc = patched(&pod, &r.patch);
        assert_eq!(
            terms(&doc),
            json!([{"matchExpressions": [{"key": KEY, "operator": "In", "values": values}]}])
        );
        assert_eq!(
            doc["spec"]["schedulingGates"],
            json!([{"name": "example.com/other"}])
        );
        // The resourceVersion read is tested, so a concurrent change is never overwritten.
        assert_eq!(r.patch["metadata"], json!({"resourceVersion": "42"}));
    }

    #[test]
    fn the_requirement_is_added_to_each_existing_term() {
        let pod = pod(json!({
            "containers": [{"name": "c", "image": "reg/app:1"}],
            "affinity": {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
                ]}},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]},
            },
            "schedulingGates": [{"name": GATE}],
        }));
        let images = [ok(image(
            ImageKind::Index,
            &[("windows", Some("10.0.17763.6293"))],
        ))];
        let r = released(decide_with(&pod, &images, &hosts(), false));
        let doc = patched(&pod, &r.patch);
        let ours = json!({"key": KEY, "operator": "In", "values": ["17763"]});
        assert_eq!(
            terms(&doc),
            json!([
                {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}, ours]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}], "matchExpressions": [ours]},
            ])
        );
        // Everything else the user wrote stays.
        assert_eq!(
            doc["spec"]["affinity"]["podAntiAffinity"],
            serde_json::to_value(
                &pod.spec
                    .as_ref()
                    .unwrap()
                    .affinity
                    .as_ref()
                    .unwrap()
                    .pod_anti_affinity
            )
            .unwrap()
        );
        assert_eq!(doc["spec"]["schedulingGates"], json!([]));
    }

    #[test]
    fn a_linux_image_only_loses_the_gate() {
        let pod = gated();
        let images = [ok(image(ImageKind::Index, &[("linux", None)]))];
        let r = released(decide_with(&pod, &images, &hosts(), false));
        assert_eq!(r.outcome, Outcome::NotWindows);
        assert_eq!(r.values, None);
        let doc = patched(&pod, &r.patch);
        assert_eq!(doc["spec"].get("affinity"), None);
        assert_eq!(
            doc["spec"]["schedulingGates"],
            json!([{"name": "example.com/other"}])
        );
    }

    #[test]
    fn no_compatible_node_places_anyway_and_warns_with_the_build() {
        let pod = gated();
        let images = [ok(image(
            ImageKind::Index,
            &[("windows", Some("10.0.26100.1742"))],
        ))];
        let only_2019 = [host("ws2019", 17763)];
        let r = released(decide_with(&pod, &images, &only_2019, false));
        assert_eq!(r.outcome, Outcome::NoCompatibleNode);
        assert!(r.warning);
        assert_eq!(r.reason, NO_COMPATIBLE_NODE);
        assert_eq!(r.values.as_deref().unwrap(), ["26100", "26200"]);
        assert!(r.note.contains("26100"), "{}", r.note);
        assert_eq!(
            terms(&patched(&pod, &r.patch))[0]["matchExpressions"][0]["values"],
            json!(["26100", "26200"])
        );
    }

    /// Found by the soak (seed 42): an ltsc2019 init container beside an ltsc2022 app has no common build,
    /// and `osbuild In []` was refused by the API server (422 "values: Required value"), so the pod was
    /// released without any constraint, to start where it cannot run. It must wait Pending instead.
    #[test]
    fn images_no_build_runs_together_keep_the_pod_off_every_node() {
        let pod = pod(json!({
            "initContainers": [{"name": "i", "image": "reg/init:1"}],
            "containers": [{"name": "c", "image": "reg/app:1"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}},
            "schedulingGates": [{"name": GATE}],
        }));
        let images = [
            ok(image(
                ImageKind::Index,
                &[("windows", Some("10.0.17763.6293"))],
            )),
            ok(image(
                ImageKind::Index,
                &[("windows", Some("10.0.20348.2655"))],
            )),
        ];
        let r = released(decide_with(&pod, &images, &hosts(), false));
        assert_eq!(r.outcome, Outcome::NoCompatibleNode);
        assert_eq!(r.reason, NO_COMPATIBLE_NODE);
        assert!(r.warning);
        assert_eq!(r.values.as_deref(), Some(&[][..]));
        assert!(
            r.note.contains("no Windows build runs every image"),
            "{}",
            r.note
        );
        let doc = patched(&pod, &r.patch);
        for (i, term) in terms(&doc).as_array().unwrap().iter().enumerate() {
            let zone = if i == 0 { "a" } else { "b" };
            assert_eq!(
                term["matchExpressions"],
                json!([
                    {"key": "zone", "operator": "In", "values": [zone]},
                    {"key": KEY, "operator": "Exists"},
                    {"key": KEY, "operator": "DoesNotExist"},
                ])
            );
        }
        assert_eq!(doc["spec"]["schedulingGates"], json!([]));
    }

    fn decide_unread(
        pod: &Pod,
        images: &[ImageResult],
        unread: Unread<'_>,
        late: bool,
    ) -> Decision {
        decide_unread_on(pod, images, &hosts(), unread, late)
    }

    fn decide_unread_on(
        pod: &Pod,
        images: &[ImageResult],
        hosts: &[ClusterHost],
        unread: Unread<'_>,
        late: bool,
    ) -> Decision {
        decide(&Inputs {
            pod,
            images,
            isolation: Isolation::Process,
            hosts,
            deadline_passed: late,
            osbuild_key: KEY,
            unread,
        })
    }

    #[test]
    fn a_refused_image_waits_while_its_pull_secret_could_not_be_read() {
        // Found by the soak: reading the pod's pull secret was throttled (429), so its private image was read
        // anonymously, answered 401, and the pod was released without a host constraint.
        let pod = gated();
        let images = [failed(ErrorKind::Unauthorized)];
        let secrets = ["secret pull: throttled".to_owned()];
        let unread = Unread {
            pull_secrets: &secrets,
            runtime_class: None,
        };
        // Positive control: with every secret read, a refusal is final.
        let final_ = released(decide_unread(&pod, &images, Unread::default(), false));
        assert_eq!(final_.outcome, Outcome::ImageOsUnknown);
        match decide_unread(&pod, &images, unread, false) {
            Decision::Retry { errors } => assert!(
                errors.iter().any(|e| e.contains("secret pull: throttled")),
                "{errors:?}"
            ),
            other => panic!("expected a retry, got {other:?}"),
        }
        // Never gated forever: the deadline still frees it.
        let late = released(decide_unread(&pod, &images, unread, true));
        assert_eq!(late.outcome, Outcome::ImageOsUnknown);
    }

    #[test]
    fn an_unread_pull_secret_does_not_hold_images_that_were_read() {
        let pod = gated();
        let images = [ok(image(
            ImageKind::Index,
            &[("windows", Some("10.0.20348.2655"))],
        ))];
        let secrets = ["serviceaccount default: throttled".to_owned()];
        let unread = Unread {
            pull_secrets: &secrets,
            runtime_class: None,
        };
        let r = released(decide_unread(&pod, &images, unread, false));
        assert_eq!(r.outcome, Outcome::Placed);
    }

    #[test]
    fn an_unread_runtime_class_waits_until_the_deadline() {
        let pod = gated();
        let images = [ok(image(
            ImageKind::Index,
            &[("windows", Some("10.0.17763.6054"))],
        ))];
        let unread = Unread {
            pull_secrets: &[],
            runtime_class: Some("hyperv: throttled"),
        };
        match decide_unread(&pod, &images, unread, false) {
            Decision::Retry { errors } => {
                assert_eq!(errors, ["runtimeclass hyperv: throttled"]);
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        // After the deadline, as process isolation (the narrower set of hosts).
        let r = released(decide_unread(&pod, &images, unread, true));
        assert_eq!(r.outcome, Outcome::Placed);
        assert_eq!(r.values.as_deref().unwrap(), ["17763"]);
    }

    #[test]
    fn transient_errors_wait_until_the_deadline_then_free_the_pod() {
        let pod = gated();
        let images = [failed(ErrorKind::Timeout)];
        assert!(matches!(
            decide_with(&pod, &images, &hosts(), false),
            Decision::Retry { .. }
        ));
        let r = released(decide_with(&pod, &images, &hosts(), true));
        assert_eq!(r.outcome, Outcome::ImageOsUnknown);
        assert_eq!(r.reason, IMAGE_OS_UNKNOWN);
        assert!(
            r.note.contains("reg/app:1") && r.note.contains("timeout"),
            "{}",
            r.note
        );
        let doc = patched(&pod, &r.patch);
        assert_eq!(doc["spec"].get("affinity"), None);
        assert_eq!(
            doc["spec"]["schedulingGates"],
            json!([{"name": "example.com/other"}])
        );
    }

    #[test]
    fn errors_retrying_cannot_fix_free_the_pod_at_once() {
        for kind in [
            ErrorKind::Unauthorized,
            ErrorKind::NotFound,
            ErrorKind::BadManifest,
        ] {
            let r = released(decide_with(&gated(), &[failed(kind)], &hosts(), false));
            assert_eq!(r.outcome, Outcome::ImageOsUnknown, "{kind:?}");
            assert!(r.note.contains(kind.category()), "{}", r.note);
        }
    }

    #[test]
    fn hyper_v_isolation_runs_on_newer_hosts() {
        let pod = gated();
        let images = [ok(image(
            ImageKind::Index,
            &[("windows", Some("10.0.17763.6293"))],
        ))];
        let r = released(decide(&Inputs {
            pod: &pod,
            images: &images,
            isolation: Isolation::HyperV,
            hosts: &hosts(),
            deadline_passed: false,
            osbuild_key: KEY,
            unread: Unread::default(),
        }));
        let values = r.values.unwrap();
        assert!(
            values.contains(&"17763".to_owned())
                && values.contains(&"20348".to_owned())
                && values.contains(&"26100".to_owned()),
            "{values:?}"
        );
        assert!(r.note.contains("Hyper-V"));
    }

    #[test]
    fn a_refused_affinity_still_frees_the_pod() {
        let pod = gated();
        let r = release_without_affinity(&pod, "422 Invalid");
        assert_eq!(r.outcome, Outcome::ImageOsUnknown);
        assert!(r.warning && r.note.contains("422 Invalid"));
        let doc = patched(&pod, &r.patch);
        assert_eq!(doc["spec"].get("affinity"), None);
        assert_eq!(
            doc["spec"]["schedulingGates"],
            json!([{"name": "example.com/other"}])
        );
    }

    #[test]
    fn ungated_pods_are_left_alone() {
        let pod = pod(
            json!({"containers": [{"name": "c", "image": "x"}], "schedulingGates": [{"name": "example.com/other"}]}),
        );
        assert_eq!(decide_with(&pod, &[], &hosts(), true), Decision::NotGated);
    }

    #[test]
    fn every_image_of_the_pod_narrows_the_hosts() {
        let pod = gated();
        let images = [
            ok(image(
                ImageKind::Index,
                &[
                    ("windows", Some("10.0.17763.6293")),
                    ("windows", Some("10.0.20348.2655")),
                ],
            )),
            ok(image(
                ImageKind::Index,
                &[("windows", Some("10.0.20348.2655"))],
            )),
        ];
        let r = released(decide_with(&pod, &images, &hosts(), false));
        assert_eq!(
            r.values.unwrap(),
            ["20348", "22000", "22621", "22631", "25398", "26100"]
        );
    }
}
