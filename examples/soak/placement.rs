//! Placement in the soak: the shipped MutatingAdmissionPolicy on the soak's own control plane, the test
//! registries (loopback, `osbuild_testkit::registries`) with Windows images of several builds and shapes,
//! and a steady stream of new Windows pods that the policy gates and the leader must place through every
//! fault. What each image is comes from `tests/registry/fixtures.sh` (which pushes them with crane); the
//! checker judges each pod's placement against it with the library's pure `host_verdict`, never against
//! what the controller says.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use osbuild_controller::core::catalog::RELEASES;
use osbuild_controller::core::platform::{
    ImageKind, ImagePlatforms, Platform, VersionSource, parse_os_version,
};
use osbuild_controller::core::runs_on::{Isolation, Verdict, host_verdict};
use osbuild_controller::core::version::{WindowsVersion, parse_build_revision};
use osbuild_testkit::{RUN_LABEL, Registries, kubectl_on, repo_root};
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use serde_json::{Value, json};

use crate::checker::Checker;

/// The scheduling gate the policy adds (manifests/components/placement/mutatingadmissionpolicy.yaml).
pub const GATE: &str = "osbuild-controller.io/image-os";
pub const OSBUILD: &str = "beta.kubernetes.io/osbuild";
/// The soak's placement pods are named `place-<n>`; the other pods (`pod-<n>`) are bound at creation.
pub const POD_PREFIX: &str = "place-";
/// The pull secret some pods name: credentials for the TLS registry (htpasswd).
const PULL_SECRET: &str = "soak-pull";

/// Which registry an image lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// crane's plain-HTTP, anonymous registry.
    Plain,
    /// distribution's registry with TLS (test CA) and htpasswd: read with the pod's pull secret.
    Secure,
}

/// One test image: its repository path and what `tests/registry/fixtures.sh` pushed there.
pub struct TestImage {
    pub path: &'static str,
    pub registry: Registry,
    pub kind: ImageKind,
    /// The Windows `os.version` of each entry (of the manifest itself for a single manifest).
    pub versions: &'static [&'static str],
}

/// The images the soak's pods run: indexes of one build, an index and a Docker manifest list of two, a
/// Windows Server 2016 index (its hosts need the revision too), single manifests (config only), and the
/// private image behind htpasswd. Versions as fixtures.sh sets them with `crane mutate --set-platform`.
pub const IMAGES: &[TestImage] = &[
    TestImage {
        path: "windows/ltsc2019",
        registry: Registry::Plain,
        kind: ImageKind::Index,
        versions: &["10.0.17763.6293"],
    },
    TestImage {
        path: "windows/ltsc2022",
        registry: Registry::Plain,
        kind: ImageKind::Index,
        versions: &["10.0.20348.2655"],
    },
    TestImage {
        path: "windows/multi",
        registry: Registry::Plain,
        kind: ImageKind::Index,
        versions: &["10.0.17763.6293", "10.0.20348.2655"],
    },
    TestImage {
        path: "windows/dockerlist",
        registry: Registry::Plain,
        kind: ImageKind::Index,
        versions: &["10.0.17763.6293", "10.0.20348.2655"],
    },
    TestImage {
        path: "windows/ws2016",
        registry: Registry::Plain,
        kind: ImageKind::Index,
        versions: &["10.0.14393.1715"],
    },
    TestImage {
        path: "windows/single",
        registry: Registry::Plain,
        kind: ImageKind::Manifest,
        versions: &["10.0.20348.2655"],
    },
    TestImage {
        path: "images/ltsc2025",
        registry: Registry::Plain,
        kind: ImageKind::Manifest,
        versions: &["10.0.26100.1742"],
    },
    TestImage {
        path: "private/ltsc2019",
        registry: Registry::Secure,
        kind: ImageKind::Index,
        versions: &["10.0.17763.6293"],
    },
];

/// RuntimeClasses some pods name: containerd's Windows handlers (docs/placement.md).
pub const RUNTIME_CLASSES: [(&str, &str, Isolation); 2] = [
    ("soak-process", "runhcs-wcow-process", Isolation::Process),
    ("soak-hyperv", "runhcs-wcow-hypervisor", Isolation::HyperV),
];

impl TestImage {
    pub fn reference(&self, registries: &Registries) -> String {
        match self.registry {
            Registry::Plain => registries.plain(self.path),
            Registry::Secure => registries.secure(self.path),
        }
    }

    /// The platforms as the registry describes them.
    pub fn platforms(&self) -> ImagePlatforms {
        ImagePlatforms {
            kind: self.kind,
            platforms: self
                .versions
                .iter()
                .map(|v| Platform {
                    os: "windows".into(),
                    architecture: "amd64".into(),
                    os_version: Some((*v).to_owned()),
                    version_source: match self.kind {
                        ImageKind::Index => VersionSource::Index,
                        ImageKind::Manifest => VersionSource::Config,
                    },
                    matches_any_host: false,
                    digest: None,
                })
                .collect(),
        }
    }
}

/// The test image an image reference names (`host:port/path`).
pub fn image_of(reference: &str) -> Option<&'static TestImage> {
    let (_, path) = reference.split_once('/')?;
    let path = path.strip_suffix(":latest").unwrap_or(path);
    IMAGES.iter().find(|i| i.path == path)
}

pub fn isolation_of(runtime_class: Option<&str>) -> Isolation {
    RUNTIME_CLASSES
        .iter()
        .find(|(name, ..)| Some(*name) == runtime_class)
        .map_or(Isolation::Process, |(.., isolation)| *isolation)
}

/// What one required nodeSelectorTerm says about the osbuild label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// `osbuild In [values]`.
    In(Vec<String>),
    /// `osbuild Exists` and `osbuild DoesNotExist`: no node at all.
    Nowhere,
    /// Nothing about the osbuild label.
    Missing,
}

/// Whether some Windows host runs every image: the catalog's builds and the images' own versions as hosts.
fn some_host_runs_all(images: &[&TestImage], isolation: Isolation) -> Option<String> {
    let mut hosts: Vec<WindowsVersion> = RELEASES
        .iter()
        .map(|r| WindowsVersion::new(r.build, None))
        .collect();
    hosts.extend(
        images
            .iter()
            .flat_map(|i| i.versions)
            .filter_map(|v| parse_os_version(v)),
    );
    hosts
        .into_iter()
        .find(|host| {
            images
                .iter()
                .all(|i| host_verdict(&i.platforms(), *host, isolation) == Verdict::Runs)
        })
        .map(|h| h.to_string())
}

/// Whether a released pod's node selection lets it run only where every image of it runs: returns what is
/// wrong, if anything. `selections`: what each required nodeSelectorTerm says about the osbuild label.
/// Pure: the checker's judgement, from the fixtures' platforms alone.
pub fn judge_selection(
    selections: &[Selection],
    images: &[&TestImage],
    isolation: Isolation,
) -> Result<(), String> {
    if selections.is_empty() {
        return Err("released without any node affinity".into());
    }
    for (i, selection) in selections.iter().enumerate() {
        let values = match selection {
            Selection::In(values) => values,
            Selection::Missing => {
                return Err(format!(
                    "required term {i} has no `{OSBUILD} In` expression"
                ));
            }
            // Right only when no host at all runs every image.
            Selection::Nowhere => match some_host_runs_all(images, isolation) {
                Some(host) => {
                    return Err(format!(
                        "required term {i} selects no node, but a {host} host runs every image"
                    ));
                }
                None => continue,
            },
        };
        if values.is_empty() {
            return Err(format!("required term {i} selects no osbuild value"));
        }
        for value in values {
            let Some(Ok(host)) = parse_build_revision(value) else {
                return Err(format!("{value:?} is not an osbuild value"));
            };
            for image in images {
                let verdict = host_verdict(&image.platforms(), host, isolation);
                if verdict != Verdict::Runs {
                    return Err(format!(
                        "selects osbuild {value}, where {} ({:?}) does not run with {isolation:?} isolation ({verdict:?})",
                        image.path, image.versions
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What each required nodeSelectorTerm of the pod says about the osbuild label.
pub fn selections(pod: &Pod) -> Vec<Selection> {
    let terms = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    terms
        .iter()
        .map(|t| {
            let ours: Vec<_> = t
                .match_expressions
                .iter()
                .flatten()
                .filter(|e| e.key == OSBUILD)
                .collect();
            if let Some(e) = ours.iter().find(|e| e.operator == "In") {
                Selection::In(e.values.clone().unwrap_or_default())
            } else if ours.iter().any(|e| e.operator == "Exists")
                && ours.iter().any(|e| e.operator == "DoesNotExist")
            {
                Selection::Nowhere
            } else {
                Selection::Missing
            }
        })
        .collect()
}

/// Everything the checker's judgement of a pod's placement rests on, in one line, so that a failing run
/// can be analysed from its report alone: the containers' images (with the builds fixtures.sh pushed for
/// each), the RuntimeClass and the isolation it means, the pull secrets, and every required
/// nodeSelectorTerm as the API server returned it.
pub fn describe(pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let images: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("init ", c))
        .chain(spec.containers.iter().map(|c| ("", c)))
        .map(|(init, c)| {
            let reference = c.image.as_deref().unwrap_or("(none)");
            let what = image_of(reference).map_or("not a test image".to_owned(), |i| {
                format!("{:?} {:?}", i.kind, i.versions)
            });
            format!("{init}{} {reference} ({what})", c.name)
        })
        .collect();
    let class = spec.runtime_class_name.as_deref();
    let secrets: Vec<&str> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .collect();
    let terms: Vec<String> = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| {
            r.node_selector_terms
                .iter()
                .map(|t| {
                    let exprs: Vec<String> = t
                        .match_expressions
                        .iter()
                        .flatten()
                        .map(|e| {
                            format!(
                                "{} {} {:?}",
                                e.key,
                                e.operator,
                                e.values.clone().unwrap_or_default()
                            )
                        })
                        .collect();
                    format!("{{{}}}", exprs.join(", "))
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "images [{}], runtimeClass {} ({:?} isolation), imagePullSecrets {secrets:?}, required node affinity {}, gates {:?}",
        images.join("; "),
        class.unwrap_or("(none)"),
        isolation_of(class),
        if terms.is_empty() {
            "none".to_owned()
        } else {
            terms.join(" or ")
        },
        spec.scheduling_gates
            .iter()
            .flatten()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
    )
}

pub fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.name == GATE))
}

/// The test images of a pod's containers and init containers (`None` if one is not a test image).
pub fn pod_images(pod: &Pod) -> Option<Vec<&'static TestImage>> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.image.as_deref().and_then(image_of))
        .collect()
}

/// The policy and its binding exactly as manifests/components/placement ships them, RuntimeClasses and the
/// pull secret; returns once the API server gates a Windows pod (it loads a new policy asynchronously).
pub async fn setup(
    client: &Client,
    kubeconfig: &Path,
    namespace: &str,
    prefix: &str,
    registries: &Registries,
) {
    let policy = repo_root().join("manifests/components/placement/mutatingadmissionpolicy.yaml");
    let (ok, _, stderr) = kubectl_on(
        kubeconfig,
        &["apply", "--server-side", "-f", policy.to_str().unwrap()],
        "",
    );
    assert!(ok, "applying the placement policy failed: {stderr}");
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    for (name, handler, _) in RUNTIME_CLASSES {
        let class: RuntimeClass =
            serde_json::from_value(json!({"metadata": {"name": name}, "handler": handler}))
                .unwrap();
        match classes.create(&PostParams::default(), &class).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create RuntimeClass {name}: {e}"),
        }
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        registries.get("REGISTRY_USER"),
        registries.get("REGISTRY_PASSWORD")
    ));
    let config = json!({"auths": {registries.secure_host(): {"auth": auth}}});
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": PULL_SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config.to_string()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the pull secret");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let probe: Pod = serde_json::from_value(pod_manifest(
        "policy-probe",
        prefix,
        &["probe".to_owned()],
        None,
        false,
    ))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let start = Instant::now();
    loop {
        let admitted = pods.create(&dry, &probe).await;
        if admitted.as_ref().is_ok_and(has_gate) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the placement policy never gated a Windows pod: {admitted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Windows pod (nodeSelector `kubernetes.io/os: windows`, and the soak's nodes only) running `images`
/// (the first ones as init containers), not bound: kube-scheduler binds it once it is placed.
fn pod_manifest(
    name: &str,
    prefix: &str,
    images: &[String],
    runtime_class: Option<&str>,
    pull_secret: bool,
) -> Value {
    let (main, init) = images.split_last().expect("an image");
    let mut spec = json!({
        "nodeSelector": {"kubernetes.io/os": "windows", RUN_LABEL: prefix},
        "containers": [{"name": "app", "image": main}],
        "serviceAccountName": "default",
        "terminationGracePeriodSeconds": 0,
    });
    if !init.is_empty() {
        spec["initContainers"] = init
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("init{i}"), "image": image}))
            .collect();
    }
    if let Some(class) = runtime_class {
        spec["runtimeClassName"] = json!(class);
    }
    if pull_secret {
        spec["imagePullSecrets"] = json!([{ "name": PULL_SECRET }]);
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

#[derive(Default)]
pub struct PlacementStats {
    pub created: AtomicUsize,
    /// Admitted with our gate (the policy at work).
    pub created_gated: AtomicUsize,
    /// Admitted without it: only right after a kube-apiserver restart, before it has loaded the policy
    /// (`failurePolicy: Ignore`, docs/placement.md).
    pub created_ungated: AtomicUsize,
    pub deleted: AtomicUsize,
    pub errors: AtomicUsize,
}

/// Creates a Windows pod every `1/rate` s and deletes those older than `keep`, until `stop`. Every API
/// error is counted and survived.
#[allow(clippy::too_many_arguments)]
pub async fn churn(
    client: Client,
    namespace: String,
    prefix: String,
    registries: &'static Registries,
    seed: u64,
    rate: f64,
    keep: Duration,
    checker: Checker,
    stats: Arc<PlacementStats>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = XorShiftRng::seed_from_u64(seed);
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut live: VecDeque<(String, Instant)> = VecDeque::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        n += 1;
        let name = format!("{POD_PREFIX}{n}");
        let image = IMAGES.choose(&mut rng).unwrap();
        let mut images = vec![image.reference(registries)];
        if rng.random_bool(0.2) {
            // an init container of another build: only hosts that run both
            images.insert(0, IMAGES.choose(&mut rng).unwrap().reference(registries));
        }
        let runtime_class = match rng.random_range(0..5) {
            0 => Some(RUNTIME_CLASSES[0].0),
            1 => Some(RUNTIME_CLASSES[1].0),
            _ => None,
        };
        // The private image (in either container) needs the pull secret; others name it now and then.
        let secret = images
            .iter()
            .any(|i| image_of(i).is_some_and(|i| i.registry == Registry::Secure))
            || rng.random_bool(0.2);
        let pod: Pod =
            serde_json::from_value(pod_manifest(&name, &prefix, &images, runtime_class, secret))
                .unwrap();
        let created = tokio::time::timeout(
            Duration::from_secs(10),
            pods.create(&PostParams::default(), &pod),
        )
        .await;
        match created {
            Ok(Ok(pod)) => {
                stats.created.fetch_add(1, Ordering::Relaxed);
                let gated = has_gate(&pod);
                if gated {
                    stats.created_gated.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.created_ungated.fetch_add(1, Ordering::Relaxed);
                }
                checker.placement_created(&pod.uid().unwrap_or_default(), &name, gated);
                live.push_back((name, Instant::now()));
            }
            _ => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        while live.front().is_some_and(|(_, at)| at.elapsed() > keep) {
            let (old, _) = live.pop_front().unwrap();
            let deleted = tokio::time::timeout(
                Duration::from_secs(10),
                pods.delete(&old, &DeleteParams::default().grace_period(0)),
            )
            .await;
            match deleted {
                Ok(Ok(_)) => {
                    stats.deleted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => {}
                _ => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    // try again next time
                    live.push_front((old, Instant::now() - keep));
                    break;
                }
            }
        }
        tokio::time::sleep(period.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(path: &str) -> &'static TestImage {
        IMAGES.iter().find(|i| i.path == path).unwrap()
    }

    fn sel(values: &[&str]) -> Vec<Selection> {
        vec![Selection::In(
            values.iter().map(|v| (*v).to_owned()).collect(),
        )]
    }

    // The hosts docs/placement.md gives for each shape: an ltsc2022 index runs on 20348..26100, not 17763
    // nor 26200; a single ltsc2022 manifest also on 26200; Windows Server 2016 only at its revision.
    #[test]
    fn a_selection_of_hosts_that_run_the_image_passes() {
        let ltsc2022 = image("windows/ltsc2022");
        assert!(
            judge_selection(&sel(&["20348", "26100"]), &[ltsc2022], Isolation::Process).is_ok()
        );
        assert!(judge_selection(&sel(&["26200"]), &[ltsc2022], Isolation::Process).is_err());
        assert!(
            judge_selection(
                &sel(&["26200"]),
                &[image("windows/single")],
                Isolation::Process
            )
            .is_ok()
        );
        let ws2016 = image("windows/ws2016");
        assert!(judge_selection(&sel(&["14393.1715"]), &[ws2016], Isolation::Process).is_ok());
        assert!(judge_selection(&sel(&["14393.1944"]), &[ws2016], Isolation::Process).is_err());
    }

    #[test]
    fn a_host_that_does_not_run_every_image_fails() {
        let both = [image("windows/multi"), image("windows/ltsc2019")];
        assert!(judge_selection(&sel(&["17763"]), &both, Isolation::Process).is_ok());
        assert!(judge_selection(&sel(&["17763", "20348"]), &both, Isolation::Process).is_err());
        // Hyper-V: any host of the image's build or newer
        assert!(judge_selection(&sel(&["20348"]), &both, Isolation::HyperV).is_ok());
    }

    #[test]
    fn no_affinity_or_a_term_without_ours_fails() {
        let ltsc2022 = image("windows/ltsc2022");
        assert!(judge_selection(&[], &[ltsc2022], Isolation::Process).is_err());
        let mut two = sel(&["20348"]);
        two.push(Selection::Missing);
        assert!(judge_selection(&two, &[ltsc2022], Isolation::Process).is_err());
        assert!(judge_selection(&sel(&[]), &[ltsc2022], Isolation::Process).is_err());
    }

    // No node at all is right only for images that no build runs together.
    #[test]
    fn nowhere_only_when_no_host_runs_every_image() {
        let apart = [image("windows/ltsc2019"), image("windows/ltsc2022")];
        assert!(judge_selection(&[Selection::Nowhere], &apart, Isolation::Process).is_ok());
        // With Hyper-V, a 20348 host runs both.
        assert!(judge_selection(&[Selection::Nowhere], &apart, Isolation::HyperV).is_err());
        let together = [image("windows/multi"), image("windows/ltsc2022")];
        assert!(judge_selection(&[Selection::Nowhere], &together, Isolation::Process).is_err());
    }

    #[test]
    fn references_name_their_test_image() {
        assert_eq!(
            image_of("127.0.0.1:5000/windows/ltsc2022:latest").map(|i| i.path),
            Some("windows/ltsc2022")
        );
        assert_eq!(
            image_of("127.0.0.1:5000/images/ltsc2025").map(|i| i.path),
            Some("images/ltsc2025")
        );
        assert!(image_of("127.0.0.1:5000/windows/other").is_none());
    }
}
