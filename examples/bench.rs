//! The benchmark of osbuild-controller against a real control plane (docs/benchmarks.md). Run it with
//! `scripts/bench` (release build, a fresh control plane of its own); by hand:
//!
//! ```sh
//! KUBECONFIG=... cargo run --release --example bench -- --controller target/release/osbuild-controller \
//!     --nodes 5000 --pods 50000 --report bench.md
//! ```
//!
//! Phases, each timed against the API server's own counters (`/metrics`) and a watch of the nodes:
//! create N nodes and P pods; cold start of the controller; restart with every label right; the reference
//! (the same label applies from a plain concurrent loop); churn of kernelVersions (paced and burst); the
//! OS-mismatch detection latency; an idle window for steady-state requests. The controller runs as a
//! ServiceAccount whose requests a FlowSchema of our own puts in the priority level a ServiceAccount gets by
//! default (`workload-low`), so the API server counts exactly its requests
//! (`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use osbuild_controller::FIELD_MANAGER as MANAGER;
use osbuild_controller::core::labels::LabelKeys;
use osbuild_controller::nodes::{labels_hold, plan::plan};
use osbuild_controller::ownership::applied_label_keys;
use osbuild_testkit::{Scrape, client_from, free_port, http_get, token_kubeconfig};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Every node the bench creates carries this label; its watch and the reference select on it.
const BENCH_LABEL: &str = "osbuild-bench";
const BENCH_NS: &str = "osbuild-bench";
const DETECT_NS: &str = "osbuild-bench-detect";
const POD_NAMESPACES: usize = 10;
const CONTROLLER_SA: &str = "osbuild-controller";
const REFERENCE_SA: &str = "bench-reference";
const CONTROLLER_FS: &str = "osbuild-bench-controller";
const REFERENCE_FS: &str = "osbuild-bench-reference";

#[derive(Debug, Parser)]
#[command(about = "Benchmark osbuild-controller against the control plane in KUBECONFIG")]
struct Args {
    /// Nodes to create (about 90% Windows, 10% Linux).
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods to create, bound to the nodes (spec.nodeName) across 10 namespaces.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Where to write the markdown report.
    #[arg(long, default_value = "bench-report.md")]
    report: PathBuf,
    /// Small and fast, for CI: 50 nodes, 200 pods, 10 detections, a 5 s idle window, 1 s settling.
    #[arg(long)]
    quick: bool,
    /// The controller binary (a release build).
    #[arg(
        long,
        env = "OSBUILD_BENCH_CONTROLLER",
        default_value = "target/release/osbuild-controller"
    )]
    controller: PathBuf,
    /// Directory of the control-plane binaries (for the etcd version in the report).
    #[arg(long, env = "OSBUILD_BENCH_BINDIR")]
    bindir: Option<PathBuf>,
    /// Where controller logs and kubeconfigs go (default: next to the report).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Concurrent requests when creating nodes and pods.
    #[arg(long, default_value_t = 48)]
    create_concurrency: usize,
    /// Concurrent applies of the reference loop, one run each; 0 = unbounded. The first run is the one the
    /// cold start is compared with: keep it equal to the controller's `--concurrency` (default 16).
    #[arg(long, value_delimiter = ',', default_value = "16,0")]
    reference_concurrency: Vec<usize>,
    /// An extra flag for `osbuild-controller run` (repeat it), e.g. `--controller-arg=--concurrency=64`.
    #[arg(long, allow_hyphen_values = true)]
    controller_arg: Vec<String>,
    /// Priority level the controller's and the reference's FlowSchemas point at.
    #[arg(long, default_value = "workload-low")]
    priority_level: String,
    /// Share of all nodes whose kernelVersion changes in the churn phases.
    #[arg(long, default_value_t = 10.0)]
    churn_percent: f64,
    /// kernelVersion changes per second in the paced churn phase.
    #[arg(long, default_value_t = 50)]
    churn_rate: u32,
    /// Pods turned into the OS mismatch in the detection phase (one every 250 ms).
    #[arg(long, default_value_t = 20)]
    detect_pods: usize,
    /// Length of the idle window for steady-state requests.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Create the nodes, pods and identities, then stop (for profiling the controller by hand; keep the
    /// control plane with OSBUILD_KEEP_CONTROL_PLANE=1).
    #[arg(long)]
    setup_only: bool,
    /// Create pods without a status (no Running containerStatuses): faster, smaller objects.
    #[arg(long)]
    no_pod_status: bool,
    /// After the other phases, measure the growth curve: a controller started (labels right) for every
    /// combination of --growth-nodes and --growth-pods, nodes chosen with --node-selector on a tier label,
    /// pods removed (largest tier first) between the pod counts.
    #[arg(long)]
    growth: bool,
    /// Node counts of the growth curve (nodes beyond --nodes are created for it).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    growth_nodes: Vec<usize>,
    /// Pod counts of the growth curve (at most --pods; measured from the largest down).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,150000")]
    growth_pods: Vec<usize>,
    /// Placement: pods created at --placement-rate in each of two batches (cold cache, then warm), gated by
    /// the shipped MutatingAdmissionPolicy (applied to this control plane), images from a registry started
    /// here (`scripts/registry`, the test fixtures); 0 skips the phase.
    #[arg(long, default_value_t = 0)]
    placement_pods: usize,
    /// Gated pods created per second in the placement phase.
    #[arg(long, default_value_t = 50)]
    placement_rate: u64,
    /// Skip the restart with `--initial-list=paged` (minutes at 150,000 pods).
    #[arg(long)]
    no_paged_restart: bool,
    /// Where the growth plot (PNG) goes; default: next to the report, `<report>-growth.png`.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The tier label of node `i` (or pod `j`): the smallest count in `tiers` that includes it, else `total`.
fn tier(i: usize, tiers: &[usize], total: usize) -> usize {
    tiers
        .iter()
        .copied()
        .filter(|t| i < *t)
        .min()
        .unwrap_or(total.max(i + 1))
}

const PLACE_NS: &str = "osbuild-bench-place";
const GATE: &str = "osbuild-controller.io/image-os";
/// The distinct images of the placement phase: paths on the plain test registry (tests/registry/fixtures.sh).
const PLACE_IMAGES: [&str; 8] = [
    "windows/ltsc2019",
    "windows/ltsc2022",
    "windows/ltsc2025",
    "windows/multi",
    "windows/ws2016",
    "windows/dockerlist",
    "windows/single",
    "windows/cached",
];
const NODE_TIER: &str = "osbuild-bench/tier";
const POD_TIER: &str = "osbuild-bench/pod-tier";

// ------------------------------------------------------------------------------------------ placement

/// The test registries (`scripts/registry up` in a state dir of this run's own, fixtures pushed to the
/// plain one); `down` on drop.
struct Registry {
    dir: PathBuf,
    plain: String,
}

impl Registry {
    fn start(work_dir: &Path) -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = work_dir.join("registry");
        log("placement: starting the test registries (scripts/registry up)");
        let up = Command::new(root.join("scripts/registry"))
            .arg("up")
            .env("OSBUILD_REGISTRY_DIR", &dir)
            .stderr(Stdio::inherit())
            .output()
            .context("run scripts/registry up")?;
        if !up.status.success() {
            bail!("scripts/registry up failed ({})", up.status);
        }
        let vars: HashMap<String, String> = String::from_utf8_lossy(&up.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let plain = vars
            .get("REGISTRY_PLAIN")
            .cloned()
            .ok_or_else(|| anyhow!("scripts/registry up printed no REGISTRY_PLAIN"))?;
        let registry = Self { dir, plain };
        let pushed = Command::new(root.join("tests/registry/fixtures.sh"))
            .arg("plain")
            .envs(&vars)
            .stderr(Stdio::inherit())
            .output()
            .context("run tests/registry/fixtures.sh")?;
        if !pushed.status.success() {
            bail!("pushing the test images failed ({})", pushed.status);
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let _ = Command::new(root.join("scripts/registry"))
            .arg("down")
            .env("OSBUILD_REGISTRY_DIR", &self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Applies the shipped MutatingAdmissionPolicy and its binding to this run's control plane (kubectl, as a
/// user would) and waits until the API server gates a Windows pod (a server-side dry run).
fn apply_placement_policy(args: &Args) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kubectl = args
        .bindir
        .as_ref()
        .map_or_else(|| PathBuf::from("kubectl"), |d| d.join("kubectl"));
    let policy = root.join("manifests/components/placement/mutatingadmissionpolicy.yaml");
    let status = Command::new(&kubectl)
        .args(["apply", "--server-side", "-f"])
        .arg(&policy)
        .stdout(Stdio::null())
        .status()
        .context("run kubectl apply")?;
    if !status.success() {
        bail!("kubectl apply -f {} failed ({status})", policy.display());
    }
    let probe = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "policy-probe", "namespace": PLACE_NS},
        "spec": {"os": {"name": "windows"}, "containers": [{"name": "c", "image": "probe"}]}})
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut child = Command::new(&kubectl)
            .args(["create", "--dry-run=server", "-o", "json", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(probe.as_bytes())?;
        let out = child.wait_with_output()?;
        if String::from_utf8_lossy(&out.stdout).contains(GATE) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the admission policy never gated a Windows pod");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Debug, Default)]
struct PlacementResults {
    pods: usize,
    /// The first pod of each distinct image after the controller started (its cache empty).
    cold: Latency,
    /// Every pod of the second batch (every image cached).
    warm: Latency,
    /// The controller's requests to the registry (`osbuild_registry_request_duration_seconds_count`).
    registry_requests: f64,
    /// Of those, in the warm batch (every image cached: 0 expected).
    registry_requests_warm: f64,
    /// Its image reads by outcome (`osbuild_image_resolutions_total`), from the cache or the registry.
    resolutions: f64,
    placed_with_affinity: usize,
    failures: Vec<String>,
}

/// Creates `--placement-pods` gated Windows pods at `--placement-rate`, twice (cold cache, then warm), and
/// times each from the create request to the moment a watch sees our gate gone.
async fn placement(
    admin: &Client,
    args: &Args,
    controller: &ControllerProcess,
    plain: &str,
) -> Result<PlacementResults> {
    let api: Api<Pod> = Api::namespaced(admin.clone(), PLACE_NS);
    let released: Arc<Mutex<HashMap<String, (Instant, bool)>>> = Arc::default();
    {
        let (api, released) = (api.clone(), released.clone());
        tokio::spawn(async move {
            let mut events = pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event {
                    let spec = pod.spec.as_ref();
                    let gated = spec
                        .and_then(|s| s.scheduling_gates.as_ref())
                        .is_some_and(|g| g.iter().any(|g| g.name == GATE));
                    if !gated {
                        let affinity = spec.and_then(|s| s.affinity.as_ref()).is_some_and(|a| {
                            serde_json::to_string(a)
                                .unwrap_or_default()
                                .contains("beta.kubernetes.io/osbuild")
                        });
                        released
                            .lock()
                            .unwrap()
                            .entry(pod.name_any())
                            .or_insert((Instant::now(), affinity));
                    }
                }
            }
        });
    }
    let registry_before = controller
        .metric("osbuild_registry_request_duration_seconds_count")
        .await;
    let resolutions_before = controller.metric("osbuild_image_resolutions_total").await;
    let mut results = PlacementResults {
        pods: args.placement_pods,
        ..Default::default()
    };
    for batch in ["cold", "warm"] {
        let batch_registry_before = controller
            .metric("osbuild_registry_request_duration_seconds_count")
            .await;
        let sent: Arc<Mutex<Vec<(String, usize, Instant)>>> = Arc::default();
        let interval = Duration::from_secs_f64(1.0 / args.placement_rate.max(1) as f64);
        let start = Instant::now();
        let progress = Progress::start(&format!("placement ({batch})"), args.placement_pods as u64);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..args.placement_pods {
            tokio::time::sleep_until((start + interval * i as u32).into()).await;
            let name = format!("place-{batch}-{i:04}");
            let image = format!("{plain}/{}", PLACE_IMAGES[i % PLACE_IMAGES.len()]);
            let pod: Pod = from_json(json!({
                "metadata": {"name": name},
                // IfNotPresent: with the default for an untagged image (Always) every pod is read from
                // the registry again, as designed (docs/placement.md), and no cache is measured.
                "spec": {"nodeSelector": {"kubernetes.io/os": "windows"}, "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "app", "image": image, "imagePullPolicy": "IfNotPresent"}]}
            }))?;
            let (api, sent, progress) = (api.clone(), sent.clone(), progress.clone());
            tasks.spawn(async move {
                let t = Instant::now();
                let result = retry(&format!("create pod {name}"), || create(&api, &pod)).await;
                sent.lock().unwrap().push((name, i % PLACE_IMAGES.len(), t));
                progress.inc();
                result
            });
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        progress.finish();
        let deadline = Instant::now() + Duration::from_secs(120);
        let sent = std::mem::take(&mut *sent.lock().unwrap());
        loop {
            let done = {
                let released = released.lock().unwrap();
                sent.iter()
                    .filter(|(n, _, _)| released.contains_key(n))
                    .count()
            };
            if done == sent.len() {
                break;
            }
            if Instant::now() > deadline {
                results.failures.push(format!(
                    "placement ({batch}): {} of {} pods still gated after 120 s",
                    sent.len() - done,
                    sent.len()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut all = Vec::new();
        let mut cold = Vec::new();
        {
            let released = released.lock().unwrap();
            let mut firsts: HashMap<usize, Instant> = HashMap::new();
            let mut sorted = sent.clone();
            sorted.sort_by_key(|(_, _, t)| *t);
            for (name, image, t) in &sorted {
                if let Some((at, affinity)) = released.get(name) {
                    let d = at.saturating_duration_since(*t);
                    all.push(d);
                    results.placed_with_affinity += usize::from(*affinity);
                    if !firsts.contains_key(image) {
                        firsts.insert(*image, *t);
                        cold.push(d);
                    }
                }
            }
        }
        if batch == "cold" {
            results.cold = latency(cold);
        } else {
            results.warm = latency(all);
            results.registry_requests_warm = controller
                .metric("osbuild_registry_request_duration_seconds_count")
                .await
                - batch_registry_before;
        }
    }
    results.registry_requests = controller
        .metric("osbuild_registry_request_duration_seconds_count")
        .await
        - registry_before;
    results.resolutions =
        controller.metric("osbuild_image_resolutions_total").await - resolutions_before;
    // Every image here is a Windows image with a known build: every pod must come out with the affinity.
    if results.placed_with_affinity != 2 * args.placement_pods {
        results.failures.push(format!(
            "placement: {} of {} pods released with the osbuild affinity",
            results.placed_with_affinity,
            2 * args.placement_pods
        ));
    }
    // The growth phase counts pods: remove these (grace 0, no kubelet here).
    let params = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    api.delete_collection(&params, &ListParams::default())
        .await?;
    Ok(results)
}

// ------------------------------------------------------------------------------------------ growth

/// One point of the growth curve: a controller started with every label right, watching `nodes` nodes
/// (by tier label) and every pod, until ready and quiet.
#[derive(Debug, Clone, Default)]
struct GrowthPoint {
    nodes: usize,
    pods: usize,
    ready: Duration,
    peak_rss_kib: u64,
    /// RSS once ready and quiet (VmRSS before the stop): what the process keeps, without the initial
    /// stream's transient buffers that the peak includes.
    quiet_rss_kib: u64,
    cpu_seconds: f64,
    /// The controller's requests (its FlowSchema's dispatched counter) from start to quiet.
    requests: f64,
    lists: f64,
}

/// The selector of the nodes of tiers up to `n`.
fn tier_selector(n: usize, tiers: &[usize]) -> String {
    let values: Vec<String> = tiers
        .iter()
        .filter(|t| **t <= n)
        .map(ToString::to_string)
        .collect();
    format!("{NODE_TIER} in ({})", values.join(","))
}

async fn growth(
    admin: &Client,
    args: &Args,
    kubeconfig: &Path,
    work_dir: &Path,
    r: &mut Results,
) -> Result<()> {
    let mut node_counts = args.growth_nodes.clone();
    node_counts.sort_unstable();
    node_counts.dedup();
    let mut pod_counts: Vec<usize> = args.growth_pods.clone();
    pod_counts.sort_unstable();
    pod_counts.dedup();
    for p in pod_counts.iter().filter(|p| **p > args.pods) {
        r.growth_missing
            .push(format!("P = {p}: more than the {} pods created", args.pods));
    }
    pod_counts.retain(|p| *p <= args.pods);
    let max_nodes = node_counts.last().copied().unwrap_or(args.nodes);
    let settle_timeout = Duration::from_secs(120 + max_nodes as u64 / 5);
    if max_nodes > args.nodes {
        log(format!(
            "growth: creating nodes {}..{max_nodes}",
            args.nodes
        ));
        let defs = node_defs(max_nodes);
        create_nodes(
            admin,
            &defs[args.nodes..],
            args.nodes,
            &node_counts,
            args.create_concurrency,
        )
        .await?;
        // Label the new nodes once, so every point below starts with every label right.
        let controller =
            ControllerProcess::spawn_with(args, kubeconfig, work_dir, "growth-warmup", &[])?;
        let mut controller = controller;
        controller.wait_ready(settle_timeout).await?;
        controller.wait_quiet(quiet(), settle_timeout).await?;
        controller.stop().await?;
    }
    let mut current_pods = args.pods;
    for &pods in pod_counts.iter().rev() {
        if pods < current_pods {
            log(format!("growth: deleting pods down to {pods}"));
            delete_pods_above(admin, pods, &args.growth_pods, args.pods).await?;
            current_pods = pods;
        }
        for &nodes in &node_counts {
            let selector = tier_selector(nodes, &node_counts);
            let before = ApiMetrics::scrape(admin).await?;
            let t0 = Instant::now();
            let mut controller = ControllerProcess::spawn_with(
                args,
                kubeconfig,
                work_dir,
                &format!("growth-{nodes}-{pods}"),
                &[format!("--node-selector={selector}")],
            )?;
            let ready = controller
                .wait_ready(settle_timeout)
                .await?
                .duration_since(t0);
            controller.wait_quiet(quiet(), settle_timeout).await?;
            let c = requests(&before, &ApiMetrics::scrape(admin).await?);
            let writes = controller.metric("osbuild_label_writes_total").await;
            let (_, usage) = controller.stop().await?;
            let point = GrowthPoint {
                nodes,
                pods,
                ready,
                peak_rss_kib: usage.peak_rss_kib,
                quiet_rss_kib: usage.rss_kib,
                cpu_seconds: usage.cpu_seconds,
                requests: c.controller,
                lists: c.lists,
            };
            log(format!(
                "growth: N={nodes} P={pods}: ready {}, peak RSS {}, quiet RSS {}, CPU {:.2} s, {} requests",
                secs(ready),
                mib(point.peak_rss_kib),
                mib(point.quiet_rss_kib),
                point.cpu_seconds,
                point.requests
            ));
            if writes != 0.0 {
                r.failures.push(format!(
                    "growth N={nodes} P={pods}: {writes} label writes with every label right"
                ));
            }
            r.growth.push(point);
        }
    }
    Ok(())
}

/// Deletes (grace period 0: no kubelet here to confirm) the pods whose tier is above `keep`.
async fn delete_pods_above(
    admin: &Client,
    keep: usize,
    tiers: &[usize],
    total: usize,
) -> Result<()> {
    let mut above: Vec<String> = tiers
        .iter()
        .filter(|t| **t > keep)
        .map(ToString::to_string)
        .collect();
    above.push(total.to_string());
    let selector = format!("{POD_TIER} in ({})", above.join(","));
    let params = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    for k in 0..POD_NAMESPACES {
        let api: Api<Pod> = Api::namespaced(admin.clone(), &format!("bench-pods-{k}"));
        retry(&format!("delete pods in bench-pods-{k}"), || async {
            api.delete_collection(&params, &ListParams::default().labels(&selector))
                .await
                .map(|_| ())
        })
        .await?;
    }
    Ok(())
}

/// Peak RSS against pods seen, one line per node count, on a white background with grid lines every
/// 4 MiB, vertical lines at each pod count and a red line at the 32 MiB target. No text: plotters' text
/// needs system fonts; docs/benchmarks.md says what the picture shows.
fn draw_growth(path: &Path, points: &[GrowthPoint]) -> Result<()> {
    use plotters::prelude::*;
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let x_max = points.iter().map(|p| p.pods).max().unwrap_or(1) as f64 * 1.05;
        let y_peak = points
            .iter()
            .map(|p| p.peak_rss_kib as f64 / 1024.0)
            .fold(32.0, f64::max);
        let y_max = (y_peak / 4.0).ceil() * 4.0 + 4.0;
        let root = BitMapBackend::new(path, (640, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        let mut y = 0.0;
        while y <= y_max {
            chart.draw_series(LineSeries::new(
                [(0.0, y), (x_max, y)],
                &RGBColor(220, 220, 220),
            ))?;
            y += 4.0;
        }
        let mut pod_counts: Vec<usize> = points.iter().map(|p| p.pods).collect();
        pod_counts.sort_unstable();
        pod_counts.dedup();
        for x in std::iter::once(0.0).chain(pod_counts.iter().map(|p| *p as f64)) {
            chart.draw_series(LineSeries::new(
                [(x, 0.0), (x, y_max)],
                &RGBColor(160, 160, 160),
            ))?;
        }
        chart.draw_series(LineSeries::new(
            [(0.0, 32.0), (x_max, 32.0)],
            RED.stroke_width(1),
        ))?;
        let mut node_counts: Vec<usize> = points.iter().map(|p| p.nodes).collect();
        node_counts.sort_unstable();
        node_counts.dedup();
        for (i, n) in node_counts.iter().enumerate() {
            let mut line: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.nodes == *n)
                .map(|p| (p.pods as f64, p.peak_rss_kib as f64 / 1024.0))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let colour = Palette99::pick(i).stroke_width(2);
            chart.draw_series(LineSeries::new(line.iter().copied(), colour))?;
            chart.draw_series(
                line.iter()
                    .map(|p| Circle::new(*p, 4, Palette99::pick(i).filled())),
            )?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// Marginal cost per node (KiB) at each pod count, and per pod seen (bytes) at each node count, of the
/// memory `rss_kib` picks from each point (peak or quiet), from the smallest and largest points of each line.
/// (count, marginal cost) pairs.
type Marginals = Vec<(usize, f64)>;

fn marginals(points: &[GrowthPoint], rss_kib: fn(&GrowthPoint) -> u64) -> (Marginals, Marginals) {
    let at = |n: usize, p: usize| points.iter().find(|g| g.nodes == n && g.pods == p);
    let mut ns: Vec<usize> = points.iter().map(|p| p.nodes).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut ps: Vec<usize> = points.iter().map(|p| p.pods).collect();
    ps.sort_unstable();
    ps.dedup();
    let grown = |a: &GrowthPoint, b: &GrowthPoint| rss_kib(b) as f64 - rss_kib(a) as f64;
    let mut per_node = Vec::new();
    if let (Some(&n0), Some(&n1)) = (ns.first(), ns.last()) {
        for &p in &ps {
            if let (Some(a), Some(b)) = (at(n0, p), at(n1, p))
                && n1 > n0
            {
                per_node.push((p, grown(a, b) / (n1 - n0) as f64));
            }
        }
    }
    let mut per_pod = Vec::new();
    if let (Some(&p0), Some(&p1)) = (ps.first(), ps.last()) {
        for &n in &ns {
            if let (Some(a), Some(b)) = (at(n, p0), at(n, p1))
                && p1 > p0
            {
                per_pod.push((n, grown(a, b) * 1024.0 / (p1 - p0) as f64));
            }
        }
    }
    (per_node, per_pod)
}

// ------------------------------------------------------------------------------------------ output

fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn log(message: impl AsRef<str>) {
    let t = started().elapsed().as_secs();
    eprintln!("[bench {:02}:{:02}] {}", t / 60, t % 60, message.as_ref());
}

/// A progress line for a phase: overwritten in place on a terminal, one line every 5 s in a log.
#[derive(Clone)]
struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    phase: String,
    total: u64,
    done: AtomicU64,
    start: Instant,
    finished: AtomicBool,
    tty: bool,
}

impl Progress {
    fn start(phase: &str, total: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        let progress = Progress(Arc::new(ProgressInner {
            phase: phase.to_owned(),
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
            finished: AtomicBool::new(false),
            tty,
        }));
        let ticker = progress.clone();
        tokio::spawn(async move {
            let tick = if tty { 1 } else { 5 };
            loop {
                tokio::time::sleep(Duration::from_secs(tick)).await;
                if ticker.0.finished.load(Ordering::SeqCst) {
                    break;
                }
                ticker.print(false);
            }
        });
        progress
    }

    fn inc(&self) {
        self.0.done.fetch_add(1, Ordering::Relaxed);
    }

    fn set(&self, done: u64) {
        self.0.done.store(done, Ordering::Relaxed);
    }

    fn print(&self, last: bool) {
        let p = &self.0;
        let done = p.done.load(Ordering::Relaxed);
        let secs = p.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let line = format!(
            "[{}] {done}/{} ({:.0}/s, {secs:.1}s)",
            p.phase, p.total, rate
        );
        if p.tty {
            eprint!("\r\x1b[2K{line}{}", if last { "\n" } else { "" });
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) -> Duration {
        self.0.finished.store(true, Ordering::SeqCst);
        self.print(true);
        self.0.start.elapsed()
    }
}

// ------------------------------------------------------------------------------------------ data

#[derive(Debug, Clone)]
struct NodeDef {
    name: String,
    os: &'static str,
    kernel: String,
}

const LINUX_KERNELS: [&str; 3] = ["5.15.0-1049-azure", "6.8.0-1012-aws", "5.4.0-195-generic"];
const REV_17763: [u32; 12] = [
    253, 316, 437, 557, 1158, 1339, 1397, 2061, 2366, 2452, 3887, 4131,
];
const REV_20348: [u32; 6] = [469, 587, 825, 1607, 1668, 2700];
const REV_26100: [u32; 3] = [32995, 1742, 2314];
const REV_14393: [u32; 3] = [1944, 2906, 3930];
const DOCKER_ERA: [&str; 4] = [
    "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
    "10.0 14393 (14393.1198.amd64fre.rs1_release_sec.170427-1353)",
    "10.0 17763 (17763.1.amd64fre.rs5_release.180914-1434)",
    "10.0 16299 (16299.15.amd64fre.rs3_release.170928-1534)",
];
const BUILD_LAB_EX: [&str; 3] = [
    "14393.1715.amd64fre.rs1_release_inmarket.170906-1810",
    "14393.1480.amd64fre.rs1_release.170706-2004",
    "16299.0.amd64fre.rs3_release.170922-1354",
];
const OTHER_DOTTED: [&str; 4] = [
    "10.0.19041.804",
    "10.0.22631.5335",
    "10.0.17134.112",
    "10.0.18362.30",
];

/// The node mix, by index mod 20: 10% Linux, 35% 10.0.17763.R, 20% 10.0.20348.R, 10% 10.0.26100.R,
/// 5% 10.0.B, 5% Docker-era, 5% bare BuildLabEx, 5% 10.0.14393.R, 5% other builds.
fn node_defs(n: usize) -> Vec<NodeDef> {
    (0..n)
        .map(|i| {
            let k = i / 20;
            let (os, kernel) = match i % 20 {
                0 | 1 => ("linux", LINUX_KERNELS[k % 3].to_owned()),
                2..=8 => ("windows", format!("10.0.17763.{}", REV_17763[k % 12])),
                9..=12 => ("windows", format!("10.0.20348.{}", REV_20348[k % 6])),
                13 | 14 => ("windows", format!("10.0.26100.{}", REV_26100[k % 3])),
                15 => (
                    "windows",
                    if k % 2 == 0 {
                        "10.0.17763"
                    } else {
                        "10.0.20348"
                    }
                    .to_owned(),
                ),
                16 => ("windows", DOCKER_ERA[k % 4].to_owned()),
                17 => ("windows", BUILD_LAB_EX[k % 3].to_owned()),
                18 => ("windows", format!("10.0.14393.{}", REV_14393[k % 3])),
                _ => ("windows", OTHER_DOTTED[k % 4].to_owned()),
            };
            NodeDef {
                name: format!("bench-{i:05}"),
                os,
                kernel,
            }
        })
        .collect()
}

fn node_object(def: &NodeDef, i: usize, tier: usize) -> Result<Node> {
    let mut labels = json!({
        BENCH_LABEL: "1",
        NODE_TIER: tier.to_string(),
        "kubernetes.io/os": def.os,
        "beta.kubernetes.io/os": def.os,
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": def.name,
        "node.kubernetes.io/instance-type": "Standard_D4s_v5",
        "topology.kubernetes.io/region": "westeurope",
        "topology.kubernetes.io/zone": format!("westeurope-{}", i % 3 + 1),
        "agentpool": if def.os == "windows" { "win" } else { "system" },
    });
    if def.os == "windows"
        && let Some(build) = def.kernel.split(['.', ' ']).nth(2)
    {
        labels["node.kubernetes.io/windows-build"] = json!(format!("10.0.{build}"));
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": def.name, "labels": labels,
                      "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": format!("10.{}.{}.0/24", 100 + i / 256 % 100, i % 256),
                 "providerID": format!("azure:///subscriptions/0000/resourceGroups/bench/providers/Microsoft.Compute/virtualMachineScaleSets/aks-{}/virtualMachines/{i}", if def.os == "windows" { "win" } else { "system" })},
    }))?)
}

fn node_status(def: &NodeDef, i: usize) -> Value {
    let now = "2026-11-23T00:00:00Z";
    let condition = |t: &str, s: &str, reason: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": format!("kubelet reports {reason}"),
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let images: Vec<Value> = (0..10)
        .map(|k| {
            json!({"names": [format!("mcr.microsoft.com/windows/servercore@sha256:{:064x}", i * 16 + k),
                             format!("mcr.microsoft.com/windows/servercore:image-{k}")],
                   "sizeBytes": 2_000_000_000u64 + k as u64})
        })
        .collect();
    json!({"status": {
        "nodeInfo": {
            "kernelVersion": def.kernel, "operatingSystem": def.os, "architecture": "amd64",
            "osImage": if def.os == "windows" { "Windows Server 2022 Datacenter" } else { "Ubuntu 22.04.4 LTS" },
            "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "containerRuntimeVersion": "containerd://1.7.20",
            "machineID": def.name, "systemUUID": def.name, "bootID": def.name
        },
        "conditions": [condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                       condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                       condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                       condition("Ready", "True", "KubeletReady")],
        "addresses": [{"type": "InternalIP", "address": format!("10.240.{}.{}", i / 250 % 250, i % 250 + 4)},
                      {"type": "Hostname", "address": def.name}],
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "128Gi"},
        "allocatable": {"cpu": "3860m", "memory": "12Gi", "pods": "110", "ephemeral-storage": "118Gi"},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "images": images,
    }})
}

fn image_for(def: &NodeDef) -> &'static str {
    if def.os == "linux" {
        "nginx:1.27"
    } else if def.kernel.contains("20348") {
        "mcr.microsoft.com/dotnet/framework/aspnet:4.8-windowsservercore-ltsc2022"
    } else {
        "mcr.microsoft.com/dotnet/framework/aspnet:4.8-windowsservercore-ltsc2019"
    }
}

fn pod_object(name: &str, node: &NodeDef, app: usize, tier: usize) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": format!("app-{app}"), "pod-template-hash": "7d9c6b5f4", POD_TIER: tier.to_string()},
                      "annotations": {"prometheus.io/scrape": "true"}},
        "spec": {
            "nodeName": node.name,
            "nodeSelector": {"kubernetes.io/os": node.os},
            "tolerations": [{"key": "os", "operator": "Equal", "value": "windows", "effect": "NoSchedule"}],
            "containers": [{
                "name": "app", "image": image_for(node),
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "ASPNETCORE_ENVIRONMENT", "value": "Production"}, {"name": "APP", "value": format!("app-{app}")}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            }],
        },
    }))?)
}

fn running_pod_status(node: &NodeDef, j: usize) -> Value {
    let t = "2026-11-23T00:00:00Z";
    json!({"status": {
        "phase": "Running",
        "hostIP": "10.240.0.4", "podIP": format!("10.{}.{}.{}", 100 + j / 65536 % 100, j / 256 % 256, j % 256),
        "startTime": t, "qosClass": "Burstable",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": t},
                       {"type": "PodScheduled", "status": "True", "lastTransitionTime": t}],
        "containerStatuses": [{"name": "app", "image": image_for(node), "imageID": format!("sha256:{j:064x}"),
                               "ready": true, "started": true, "restartCount": 0,
                               "state": {"running": {"startedAt": t}}}],
    }})
}

/// What the controller should put on a node with this os and kernelVersion (computed by the library).
fn expected_labels(os: &str, kernel: &str, keys: &LabelKeys) -> BTreeMap<String, String> {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "x", "labels": {"kubernetes.io/os": os}},
        "status": {"nodeInfo": {"kernelVersion": kernel, "operatingSystem": os, "architecture": "", "bootID": "",
            "containerRuntimeVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""}},
    }))
    .expect("node literal");
    plan(&node, keys).desired.unwrap_or_default()
}

fn ours(node: &Node, keys: &LabelKeys) -> BTreeMap<String, String> {
    node.labels()
        .iter()
        .filter(|(k, _)| keys.is_ours(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ------------------------------------------------------------------------------------------ tracker

/// Follows our labels on every bench node (from a watch): when each node reaches the labels it is expected
/// to have, and any label set that is neither the expected one nor the one before it (a wrong label).
#[derive(Default)]
struct Tracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Default)]
struct TrackerInner {
    keys: LabelKeys,
    synced: bool,
    current: HashMap<String, BTreeMap<String, String>>,
    expected: HashMap<String, BTreeMap<String, String>>,
    previous: HashMap<String, BTreeMap<String, String>>,
    pending: HashMap<String, Instant>,
    latencies: Vec<Duration>,
    last_arrival: Option<Instant>,
    wrong: Vec<String>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe(&self, node: &Node) {
        let now = Instant::now();
        let mut t = self.lock();
        let name = node.name_any();
        let labels = ours(node, &t.keys);
        if let Some(expected) = t.expected.get(&name) {
            if *expected == labels {
                if let Some(since) = t.pending.remove(&name) {
                    t.latencies.push(now.duration_since(since));
                    t.last_arrival = Some(now);
                }
            } else if !labels.is_empty() && t.previous.get(&name) != Some(&labels) {
                let message = format!("{name}: {labels:?} (expected {expected:?})");
                t.wrong.push(message);
            }
        }
        t.current.insert(name, labels);
    }

    /// From now on `name` should carry `labels`; it is pending from `since` until the watch shows them.
    fn expect(&self, name: &str, labels: BTreeMap<String, String>, since: Instant) {
        let mut t = self.lock();
        let already = t.current.get(name) == Some(&labels);
        if let Some(old) = t.expected.insert(name.to_owned(), labels) {
            t.previous.insert(name.to_owned(), old);
        }
        if already {
            t.pending.remove(name);
        } else {
            t.pending.insert(name.to_owned(), since);
        }
    }

    fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// The latencies recorded since the last call, and the last arrival.
    fn take(&self) -> (Vec<Duration>, Option<Instant>) {
        let mut t = self.lock();
        (std::mem::take(&mut t.latencies), t.last_arrival.take())
    }

    fn wrong(&self) -> Vec<String> {
        self.lock().wrong.clone()
    }

    fn synced(&self) -> bool {
        self.lock().synced
    }

    async fn wait_settled(&self, phase: &str, total: u64, timeout: Duration) -> Result<()> {
        let progress = Progress::start(phase, total);
        let deadline = Instant::now() + timeout;
        loop {
            let pending = self.pending() as u64;
            progress.set(total.saturating_sub(pending));
            if pending == 0 {
                progress.finish();
                return Ok(());
            }
            if Instant::now() > deadline {
                progress.finish();
                let names: Vec<String> = self.lock().pending.keys().take(5).cloned().collect();
                bail!(
                    "{phase}: {pending} nodes still without their expected labels after {timeout:?} (e.g. {names:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn_node_watch(client: Client, tracker: Arc<Tracker>) {
    tokio::spawn(async move {
        let api: Api<Node> = Api::all(client);
        let config = watcher::Config::default().labels(&format!("{BENCH_LABEL}=1"));
        let mut events = pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                    tracker.observe(&node)
                }
                Ok(watcher::Event::InitDone) => tracker.lock().synced = true,
                Ok(_) => {}
                Err(err) => log(format!("bench node watch: {err} (retrying)")),
            }
        }
    });
}

// ------------------------------------------------------------------------------------------ API helpers

fn transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs `f` until it succeeds, retrying transient errors (throttling, 5xx, connection) with backoff.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kube::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < 10 && transient(&err) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(anyhow!(err).context(what.to_owned())),
        }
    }
}

/// Creates an object; one that already exists counts as created.
async fn create<K>(api: &Api<K>, object: &K) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

async fn merge_status<K>(api: &Api<K>, name: &str, status: &Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
}

/// Server-side apply under our field manager.
async fn apply<K>(api: &Api<K>, name: &str, object: &Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(object))
        .await
}

fn from_json<K: DeserializeOwned>(value: Value) -> Result<K> {
    serde_json::from_value(value).context("object literal")
}

/// The API server's /metrics.
struct ApiMetrics(Scrape);

impl ApiMetrics {
    async fn scrape(client: &Client) -> Result<Self> {
        let request = kube::core::Request::new("")
            .get("metrics", &GetParams::default())
            .context("build /metrics request")?;
        let text = client.request_text(request).await.context("GET /metrics")?;
        Ok(Self(Scrape::parse(&text)))
    }

    /// Sum of the series of `name` whose labels include every `(key, value)`; a value starting with `!`
    /// means "not this value", `2xx` matches any 2xx code, `A|B` either value.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.0.sum_where(name, |labels| {
            filter.iter().all(|(k, want)| {
                let have = labels.get(k).unwrap_or("");
                if let Some(not) = want.strip_prefix('!') {
                    have != not
                } else if *want == "2xx" {
                    have.starts_with('2')
                } else {
                    want.split('|').any(|w| have == w)
                }
            })
        })
    }
}

/// Per-phase request counts from two scrapes.
struct Requests {
    patch_nodes: f64,
    patch_nodes_ok: f64,
    patch_nodes_429: f64,
    controller: f64,
    reference: f64,
    controller_rejected: f64,
    reference_rejected: f64,
    /// LIST requests of anyone (the bench's own node watch lists only when it starts).
    lists: f64,
    all: f64,
}

fn requests(before: &ApiMetrics, after: &ApiMetrics) -> Requests {
    let d =
        |name: &str, filter: &[(&str, &str)]| after.sum(name, filter) - before.sum(name, filter);
    // Server-side apply is counted as verb APPLY, other patches as PATCH.
    let patch = [
        ("verb", "APPLY|PATCH"),
        ("resource", "nodes"),
        ("subresource", ""),
    ];
    let with_code = |code: &'static str| {
        let mut f = patch.to_vec();
        f.push(("code", code));
        d("apiserver_request_total", &f)
    };
    let dispatched = "apiserver_flowcontrol_dispatched_requests_total";
    let rejected = "apiserver_flowcontrol_rejected_requests_total";
    Requests {
        patch_nodes: d("apiserver_request_total", &patch),
        patch_nodes_ok: with_code("2xx"),
        patch_nodes_429: with_code("429"),
        controller: d(dispatched, &[("flow_schema", CONTROLLER_FS)]),
        reference: d(dispatched, &[("flow_schema", REFERENCE_FS)]),
        controller_rejected: d(rejected, &[("flow_schema", CONTROLLER_FS)]),
        reference_rejected: d(rejected, &[("flow_schema", REFERENCE_FS)]),
        lists: d("apiserver_request_total", &[("verb", "LIST")]),
        all: d("apiserver_request_total", &[]),
    }
}

// ------------------------------------------------------------------------------------------ controller

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// Peak resident set (VmHWM), KiB.
    peak_rss_kib: u64,
    rss_kib: u64,
    cpu_seconds: f64,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Usage {
        peak_rss_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        cpu_seconds: (ticks(11) + ticks(12)) / clock_ticks(),
    }
}

/// `osbuild-controller run` as a child process.
struct ControllerProcess {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl ControllerProcess {
    fn spawn(args: &Args, kubeconfig: &Path, work_dir: &Path, tag: &str) -> Result<Self> {
        Self::spawn_with(args, kubeconfig, work_dir, tag, &[])
    }

    /// Like `spawn`, with flags added after `--controller-arg`'s (the later flag wins).
    fn spawn_with(
        args: &Args,
        kubeconfig: &Path,
        work_dir: &Path,
        tag: &str,
        extra: &[String],
    ) -> Result<Self> {
        let binary = &args.controller;
        let addr = format!("127.0.0.1:{}", free_port());
        let log = work_dir.join(format!("controller-{tag}.log"));
        let child = Command::new(binary)
            .args(["run", "--metrics-addr", &addr, "--log-filter", "warn"])
            .args(&args.controller_arg)
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        Ok(Self { child, addr, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn get(&self, path: &str) -> Result<(u16, String)> {
        Ok(http_get(&self.addr, path).await?)
    }

    async fn metric(&self, name: &str) -> f64 {
        match self.get("/metrics").await {
            Ok((200, body)) => Scrape::parse(&body).sum(name, &[]),
            _ => f64::NAN,
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get("/readyz").await {
                return Ok(Instant::now());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the controller exited ({status}); log {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller is not ready after {timeout:?}; log:\n{}",
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the controller's reconcile and write counters stop moving for `quiet`.
    async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = (f64::NAN, f64::NAN);
        let mut since = Instant::now();
        loop {
            let now = (
                self.metric("osbuild_reconcile_duration_seconds_count")
                    .await,
                self.metric("osbuild_label_writes_total").await,
            );
            if now != last || now.0.is_nan() {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the controller did not settle within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn usage(&self) -> Usage {
        usage(self.pid())
    }

    /// SIGTERM; returns the exit status and the usage read just before.
    async fn stop(mut self) -> Result<(ExitStatus, Usage)> {
        let before = self.usage();
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, before));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the controller ignored SIGTERM for 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ------------------------------------------------------------------------------------------ setup

/// Namespaces, the two ServiceAccounts, RBAC and the FlowSchemas that count each one's requests.
async fn setup_identities(
    admin: &Client,
    args: &Args,
    work_dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    for ns in [BENCH_NS, DETECT_NS, PLACE_NS]
        .into_iter()
        .map(str::to_owned)
        .chain((0..POD_NAMESPACES).map(|k| format!("bench-pods-{k}")))
    {
        create(
            &Api::<Namespace>::all(admin.clone()),
            &from_json(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
        create(
            &Api::<ServiceAccount>::namespaced(admin.clone(), &ns),
            &from_json(json!({"metadata": {"name": "default"}}))?,
        )
        .await?;
    }
    let role = "osbuild-bench-controller";
    create(
        &Api::<ClusterRole>::all(admin.clone()),
        &from_json(json!({
            "metadata": {"name": role},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": ["get"]},
                {"apiGroups": ["node.k8s.io"], "resources": ["runtimeclasses"], "verbs": ["get"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
            ],
        }))?,
    )
    .await?;
    let mut kubeconfigs = Vec::new();
    for (sa, fs) in [(CONTROLLER_SA, CONTROLLER_FS), (REFERENCE_SA, REFERENCE_FS)] {
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), BENCH_NS);
        create(&accounts, &from_json(json!({"metadata": {"name": sa}}))?).await?;
        create(
            &Api::<ClusterRoleBinding>::all(admin.clone()),
            &from_json(json!({
                "metadata": {"name": format!("{role}-{sa}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": BENCH_NS}],
            }))?,
        )
        .await?;
        create(
            &Api::<FlowSchema>::all(admin.clone()),
            &from_json(json!({
                "metadata": {"name": fs},
                "spec": {
                    "priorityLevelConfiguration": {"name": args.priority_level},
                    "matchingPrecedence": 500,
                    "distinguisherMethod": {"type": "ByUser"},
                    "rules": [{
                        "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": sa, "namespace": BENCH_NS}}],
                        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }],
                },
            }))?,
        )
        .await?;
        let path = work_dir.join(format!("{sa}.kubeconfig"));
        let admin_kubeconfig = PathBuf::from(
            std::env::var_os("KUBECONFIG").context("KUBECONFIG names the admin kubeconfig")?,
        );
        token_kubeconfig(admin, &admin_kubeconfig, BENCH_NS, sa, &path).await;
        kubeconfigs.push(path);
    }
    Ok((kubeconfigs[0].clone(), kubeconfigs[1].clone()))
}

/// Creates `defs` (nodes `offset..`), each labelled with its tier of `tiers`.
async fn create_nodes(
    admin: &Client,
    defs: &[NodeDef],
    offset: usize,
    tiers: &[usize],
    concurrency: usize,
) -> Result<Duration> {
    let api: Api<Node> = Api::all(admin.clone());
    let progress = Progress::start("create nodes", defs.len() as u64);
    let total = offset + defs.len();
    let results: Vec<Result<()>> = futures::stream::iter(defs.iter().enumerate())
        .map(|(k, def)| {
            let (api, progress) = (api.clone(), progress.clone());
            let i = offset + k;
            async move {
                let node = node_object(def, i, tier(i, tiers, total))?;
                retry(&format!("create node {}", def.name), || create(&api, &node)).await?;
                let status = node_status(def, i);
                retry(&format!("status of node {}", def.name), || {
                    merge_status(&api, &def.name, &status)
                })
                .await?;
                progress.inc();
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = progress.finish();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(elapsed)
}

async fn create_pods(
    admin: &Client,
    defs: &[NodeDef],
    pods: usize,
    tiers: &[usize],
    with_status: bool,
    concurrency: usize,
) -> Result<Duration> {
    let progress = Progress::start("create pods", pods as u64);
    let results: Vec<Result<()>> = futures::stream::iter(0..pods)
        .map(|j| {
            let progress = progress.clone();
            let api: Api<Pod> =
                Api::namespaced(admin.clone(), &format!("bench-pods-{}", j % POD_NAMESPACES));
            let node = &defs[j % defs.len()];
            async move {
                let name = format!("app-{j:06}");
                let pod = pod_object(&name, node, j % 500, tier(j, tiers, pods))?;
                retry(&format!("create pod {name}"), || create(&api, &pod)).await?;
                if with_status {
                    let status = running_pod_status(node, j);
                    retry(&format!("status of pod {name}"), || {
                        merge_status(&api, &name, &status)
                    })
                    .await?;
                }
                progress.inc();
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = progress.finish();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(elapsed)
}

// ------------------------------------------------------------------------------------------ phases

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn latency(mut values: Vec<Duration>) -> Latency {
    values.sort();
    Latency {
        n: values.len(),
        p50: percentile(&values, 0.50),
        p99: percentile(&values, 0.99),
        max: values.last().copied().unwrap_or_default(),
    }
}

/// The reference: list the nodes, decide like the controller (labels_hold), apply the same label sets with
/// the same field manager from a plain concurrent loop. Returns when the last apply has answered.
async fn reference_loop(client: &Client, keys: &LabelKeys, concurrency: usize) -> Result<usize> {
    let api: Api<Node> = Api::all(client.clone());
    let mut nodes = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.context("reference: list nodes")?;
        nodes.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    let work: Vec<(String, BTreeMap<String, String>)> = nodes
        .iter()
        .filter_map(|node| {
            let desired = plan(node, keys).desired?;
            let owned = applied_label_keys(
                node.metadata.managed_fields.as_deref().unwrap_or_default(),
                MANAGER,
            );
            let current = node.metadata.labels.clone().unwrap_or_default();
            (!labels_hold(&current, &desired, &owned)).then(|| (node.name_any(), desired))
        })
        .collect();
    drop(nodes);
    let count = work.len();
    let apply = |(name, labels): (String, BTreeMap<String, String>)| {
        let api = api.clone();
        async move {
            let patch = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
            api.patch(&name, &PatchParams::apply(MANAGER), &Patch::Apply(&patch))
                .await
                .with_context(|| format!("reference: apply labels to {name}"))
                .map(|_| ())
        }
    };
    let results: Vec<Result<()>> = if concurrency == 0 {
        futures::stream::iter(work)
            .map(apply)
            .buffer_unordered(usize::MAX)
            .collect()
            .await
    } else {
        futures::stream::iter(work)
            .map(apply)
            .buffer_unordered(concurrency)
            .collect()
            .await
    };
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(count)
}

/// Applies the empty label set with our field manager: our labels are removed (the controller is stopped).
async fn remove_labels(admin: &Client, defs: &[NodeDef], concurrency: usize) -> Result<()> {
    let api: Api<Node> = Api::all(admin.clone());
    let results: Vec<Result<()>> = futures::stream::iter(defs.iter().filter(|d| d.os == "windows"))
        .map(|def| {
            let api = api.clone();
            async move {
                let patch = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": def.name, "labels": {}}});
                retry(&format!("remove labels of {}", def.name), || {
                    apply(&api, &def.name, &patch)
                })
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

/// Changes the kernelVersion of `changes` (node, new kernel), `rate` per second (0: all at once with
/// `concurrency`), and returns the relabel latencies (status patch sent → labels seen by the watch).
async fn churn(
    admin: &Client,
    tracker: &Tracker,
    keys: &LabelKeys,
    changes: &[(String, String)],
    rate: u32,
    concurrency: usize,
    phase: &str,
) -> Result<Latency> {
    let api: Api<Node> = Api::all(admin.clone());
    let _ = tracker.take();
    let one = |(name, kernel): (String, String)| {
        let api = api.clone();
        async move {
            tracker.expect(
                &name,
                expected_labels("windows", &kernel, keys),
                Instant::now(),
            );
            let patch = json!({"status": {"nodeInfo": {"kernelVersion": kernel}}});
            retry(&format!("kernelVersion of {name}"), || {
                merge_status(&api, &name, &patch)
            })
            .await
            .map(|_| ())
        }
    };
    let results: Vec<Result<()>> = if rate == 0 {
        futures::stream::iter(changes.iter().cloned())
            .map(one)
            .buffer_unordered(concurrency)
            .collect()
            .await
    } else {
        // One change every 1/rate s, each sent as soon as its tick comes (not queued behind the others).
        let period = Duration::from_secs_f64(1.0 / f64::from(rate));
        let mut ticker = tokio::time::interval(period);
        let mut next = changes.iter().cloned();
        let mut more = true;
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut results = Vec::new();
        loop {
            tokio::select! {
                _ = ticker.tick(), if more => match next.next() {
                    Some(change) => inflight.push(one(change)),
                    None => more = false,
                },
                Some(result) = inflight.next() => results.push(result),
                else => break,
            }
        }
        results
    };
    results.into_iter().collect::<Result<Vec<()>>>()?;
    tracker
        .wait_settled(phase, changes.len() as u64, Duration::from_secs(180))
        .await?;
    Ok(latency(tracker.take().0))
}

/// Detection latency: pods on 17763 hosts running a 20348 image turn into the containerd
/// RunContainerError mismatch one every 250 ms; time until each one's OSVersionMismatch Event is seen.
async fn detection(admin: &Client, defs: &[NodeDef], count: usize) -> Result<Latency> {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
        os_mismatch: bool,
        variant: Option<String>,
    }
    let messages: Vec<Message> =
        serde_json::from_str(include_str!("../tests/data/error_messages.json"))?;
    let message = messages
        .into_iter()
        .find(|m| m.os_mismatch && m.variant.as_deref() == Some("containerd"))
        .context("no containerd mismatch message in tests/data")?
        .message;
    let hosts: Vec<&NodeDef> = defs
        .iter()
        .filter(|d| d.kernel.starts_with("10.0.17763."))
        .take(count)
        .collect();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), DETECT_NS);
    let image = "mcr.microsoft.com/windows/servercore:ltsc2022";
    for (i, host) in hosts.iter().enumerate() {
        let name = format!("mismatch-{i:03}");
        let pod: Pod = from_json(json!({"metadata": {"name": name},
            "spec": {"nodeName": host.name, "containers": [{"name": "app", "image": image}]}}))?;
        retry("create detection pod", || create(&pods, &pod)).await?;
        let status = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "app", "image": image, "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        retry("status of detection pod", || {
            merge_status(&pods, &name, &status)
        })
        .await?;
    }
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let synced = Arc::new(AtomicBool::new(false));
    let watch = {
        let (seen, synced) = (seen.clone(), synced.clone());
        let events: Api<CoreEvent> = Api::namespaced(admin.clone(), DETECT_NS);
        tokio::spawn(async move {
            let config = watcher::Config::default().fields("reason=OSVersionMismatch");
            let mut stream = pin!(watcher(events, config).default_backoff());
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => {
                        if let Some(name) = e.involved_object.name {
                            seen.lock()
                                .unwrap()
                                .entry(name)
                                .or_insert_with(Instant::now);
                        }
                    }
                    Ok(watcher::Event::InitDone) => synced.store(true, Ordering::SeqCst),
                    _ => {}
                }
            }
        })
    };
    while !synced.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the detector see the pods in their healthy state first.
    tokio::time::sleep(quiet()).await;
    let progress = Progress::start("detection", hosts.len() as u64);
    let mut sent = HashMap::new();
    for i in 0..hosts.len() {
        let name = format!("mismatch-{i:03}");
        let status = json!({"status": {"containerStatuses": [{"name": "app", "image": image, "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "RunContainerError", "message": message}}}]}});
        let t0 = Instant::now();
        retry("mismatch status", || merge_status(&pods, &name, &status)).await?;
        sent.insert(name, t0);
        progress.set(seen.lock().unwrap().len() as u64);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = seen.lock().unwrap().len();
        progress.set(n as u64);
        if n >= sent.len() {
            break;
        }
        if Instant::now() > deadline {
            progress.finish();
            watch.abort();
            bail!(
                "detection: only {n} of {} OSVersionMismatch events after 60 s",
                sent.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish();
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    Ok(latency(
        sent.iter()
            .filter_map(|(name, t0)| Some(seen.get(name)?.saturating_duration_since(*t0)))
            .collect(),
    ))
}

// ------------------------------------------------------------------------------------------ report

struct ReferenceRun {
    concurrency: usize,
    writes: usize,
    answered: Duration,
    labelled: Duration,
    requests: Requests,
}

fn concurrency_name(concurrency: usize) -> String {
    if concurrency == 0 {
        "unbounded".to_owned()
    } else {
        concurrency.to_string()
    }
}

/// How long the controller's counters must stand still before a phase counts as settled (shorter in
/// --quick mode).
static QUIET: OnceLock<Duration> = OnceLock::new();

fn quiet() -> Duration {
    *QUIET.get_or_init(|| Duration::from_secs(3))
}

/// A short pause between phases so that the API server's queues drain.
async fn controller_quiet_pause() {
    tokio::time::sleep(quiet()).await;
}

#[derive(Default)]
struct Results {
    nodes: usize,
    windows: usize,
    pods: usize,
    create_nodes: Duration,
    create_pods: Duration,
    cold_ready: Duration,
    cold_start: Duration,
    cold: Option<Requests>,
    cold_label_writes: f64,
    cold_usage: Usage,
    cold_exit: String,
    restart_ready: Duration,
    restart: Option<Requests>,
    restart_label_writes: f64,
    restart_usage: Usage,
    /// The same restart with `--initial-list=paged` (the strategy where the server refuses to stream).
    restart_paged_ready: Duration,
    restart_paged: Option<Requests>,
    restart_paged_usage: Usage,
    placement: Option<PlacementResults>,
    growth: Vec<GrowthPoint>,
    growth_missing: Vec<String>,
    /// The reference runs; the first is the one the cold start is compared with.
    references: Vec<ReferenceRun>,
    reference: Duration,
    final_ready: Duration,
    final_start: Option<Requests>,
    churn_nodes: usize,
    churn_paced: Latency,
    churn_burst: Latency,
    detect: Latency,
    steady: Option<Requests>,
    steady_cpu: f64,
    final_usage: Usage,
    final_exit: String,
    wrong: Vec<String>,
    failures: Vec<String>,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    vec![
        (
            "CPUs (nproc)".into(),
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        ("CPU model".into(), model),
        (
            "memory".into(),
            format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
        ),
        (
            "kernel".into(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
    ]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn report(args: &Args, r: &Results, versions: &[(String, String)]) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# osbuild-controller benchmark\n");
    let _ = writeln!(
        w,
        "N = {} nodes ({} Windows), P = {} pods{}. Generated by `examples/bench.rs`; see docs/benchmarks.md.\n",
        r.nodes,
        r.windows,
        r.pods,
        if args.quick {
            " (--quick: the targets are set for N = 5,000 and P = 50,000; at this size fixed costs such as process start and the 100 ms debounce dominate the cold-start ratio)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        w,
        "Controller: `osbuild-controller run --metrics-addr ... --log-filter warn{}`.\n",
        args.controller_arg
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    let _ = writeln!(w, "## Machine and versions\n\n| | |\n|---|---|");
    for (k, v) in machine().iter().chain(versions) {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    let cold = r.cold.as_ref();
    let writes_ok = cold.map_or(0.0, |c| c.patch_nodes_ok);
    let per_node = writes_ok / r.windows.max(1) as f64;
    let restart_writes = r.restart.as_ref().map_or(f64::NAN, |c| c.patch_nodes);
    let final_writes = r.final_start.as_ref().map_or(f64::NAN, |c| c.patch_nodes);
    let ratio = r.cold_start.as_secs_f64() / r.reference.as_secs_f64().max(1e-9);
    let peak = r
        .cold_usage
        .peak_rss_kib
        .max(r.restart_usage.peak_rss_kib)
        .max(r.restart_paged_usage.peak_rss_kib)
        .max(r.final_usage.peak_rss_kib);
    let steady = r.steady.as_ref().map_or(f64::NAN, |s| s.controller);
    let _ = writeln!(
        w,
        "\n## Results vs targets\n\n| measure | result | target | met |\n|---|---|---|---|"
    );
    let _ = writeln!(
        w,
        "| cold start: all {} Windows nodes labelled (from process start) | {} | ≤ 1.15 × reference ({}, concurrency {}) | {} ({ratio:.2}×) |",
        r.windows,
        secs(r.cold_start),
        secs(r.reference),
        r.references
            .first()
            .map_or("-".to_owned(), |run| concurrency_name(run.concurrency)),
        verdict(ratio <= 1.15)
    );
    for run in r.references.iter().skip(1) {
        let _ = writeln!(
            w,
            "| reference at concurrency {} (for comparison) | {} ({:.2}× the cold start) | | |",
            concurrency_name(run.concurrency),
            secs(run.labelled),
            run.labelled.as_secs_f64() / r.cold_start.as_secs_f64().max(1e-9)
        );
    }
    let _ = writeln!(
        w,
        "| label writes per node that needs one (API server: node patches with a 2xx answer) | {per_node:.3} ({writes_ok} for {} nodes; controller counted {}) | exactly 1 | {} |",
        r.windows,
        r.cold_label_writes,
        verdict(writes_ok as usize == r.windows)
    );
    let _ = writeln!(
        w,
        "| writes by a restarted controller, labels right (its own / the reference's) | {restart_writes} / {final_writes} | 0 | {} |",
        verdict(restart_writes == 0.0 && final_writes == 0.0)
    );
    let _ = writeln!(
        w,
        "| relabel latency, {} kernelVersion changes at {}/s: p50 / p99 (max) | {} / {} ({}) | p99 < 2 s | {} |",
        r.churn_paced.n,
        args.churn_rate,
        secs(r.churn_paced.p50),
        secs(r.churn_paced.p99),
        secs(r.churn_paced.max),
        verdict(r.churn_paced.p99 < Duration::from_secs(2))
    );
    let _ = writeln!(
        w,
        "| relabel latency, the same {} changes at once: p50 / p99 (max) | {} / {} ({}) | (burst, no target) | |",
        r.churn_burst.n,
        secs(r.churn_burst.p50),
        secs(r.churn_burst.p99),
        secs(r.churn_burst.max)
    );
    let _ = writeln!(
        w,
        "| detection latency, {} pods: p50 / p99 (max) | {} / {} ({}) | p99 < 2 s | {} |",
        r.detect.n,
        secs(r.detect.p50),
        secs(r.detect.p99),
        secs(r.detect.max),
        verdict(r.detect.p99 < Duration::from_secs(2))
    );
    let _ = writeln!(
        w,
        "| controller peak RSS (VmHWM, max over the four processes) | {} | ≤ 32 MiB | {} |",
        mib(peak),
        verdict(peak <= 32 * 1024)
    );
    let restart_lists = r.restart.as_ref().map_or(f64::NAN, |c| c.lists);
    let _ = writeln!(
        w,
        "| restart with every label right: ready (streaming lists) / list requests | {} / {restart_lists} | ≤ 10 s / 0 | {} |",
        secs(r.restart_ready),
        verdict(r.restart_ready <= Duration::from_secs(10) && restart_lists == 0.0)
    );
    // Only when measured (`--no-paged-restart` skips it).
    if let Some(paged) = &r.restart_paged {
        let _ = writeln!(
            w,
            "| the same restart with paged lists (`--initial-list=paged`, the fallback) | ready {}; list requests {}; peak RSS {}; CPU {:.2} s | | |",
            secs(r.restart_paged_ready),
            paged.lists,
            mib(r.restart_paged_usage.peak_rss_kib),
            r.restart_paged_usage.cpu_seconds
        );
    }
    let _ = writeln!(
        w,
        "| controller CPU, cold start (process start → all labelled) | {:.2} s | | |",
        r.cold_usage.cpu_seconds
    );
    let _ = writeln!(
        w,
        "| controller requests in {} s idle (steady state) | {steady} | | |",
        args.steady_seconds
    );
    let _ = writeln!(
        w,
        "| wrong label sets seen by the watch | {} | 0 | {} |",
        r.wrong.len(),
        verdict(r.wrong.is_empty())
    );

    let _ = writeln!(w, "\n## Details\n");
    let _ = writeln!(
        w,
        "| phase | measure |\n|---|---|\n| create {} nodes (create + status) | {} |\n| create {} pods (create{}) | {} |",
        r.nodes,
        secs(r.create_nodes),
        r.pods,
        if args.no_pod_status {
            ""
        } else {
            " + Running status"
        },
        secs(r.create_pods)
    );
    if let Some(c) = cold {
        let _ = writeln!(
            w,
            "| cold start | ready (/readyz 200: nodes, pods and events watches synced) after {}; all labelled after {}; node patches (verb APPLY or PATCH): {} (2xx {}, 429 {}); controller requests {} (APF-rejected {}); peak RSS {}; CPU {:.2} s; {} after SIGTERM |",
            secs(r.cold_ready),
            secs(r.cold_start),
            c.patch_nodes,
            c.patch_nodes_ok,
            c.patch_nodes_429,
            c.controller,
            c.controller_rejected,
            mib(r.cold_usage.peak_rss_kib),
            r.cold_usage.cpu_seconds,
            r.cold_exit
        );
    }
    if let Some(c) = &r.restart {
        let _ = writeln!(
            w,
            "| restart, labels right (streaming lists) | ready after {}; node patches {}; osbuild_label_writes_total {}; controller requests {} (LIST {}); peak RSS {}; CPU {:.2} s |",
            secs(r.restart_ready),
            c.patch_nodes,
            r.restart_label_writes,
            c.controller,
            c.lists,
            mib(r.restart_usage.peak_rss_kib),
            r.restart_usage.cpu_seconds
        );
    }
    for run in &r.references {
        let c = &run.requests;
        let _ = writeln!(
            w,
            "| reference ({} applies, concurrency {}) | all answered after {}; all labelled (watch) after {}; node patches {} (2xx {}, 429 {}); reference requests {} (APF-rejected {}) |",
            run.writes,
            concurrency_name(run.concurrency),
            secs(run.answered),
            secs(run.labelled),
            c.patch_nodes,
            c.patch_nodes_ok,
            c.patch_nodes_429,
            c.reference,
            c.reference_rejected
        );
    }
    if let Some(c) = &r.final_start {
        let _ = writeln!(
            w,
            "| start after the reference (labels right, applied by the reference under our field manager) | ready after {}; node patches {} |",
            secs(r.final_ready),
            c.patch_nodes
        );
    }
    let _ = writeln!(
        w,
        "| churn | {} nodes 17763 → 20348 at {}/s, then back all at once |",
        r.churn_nodes, args.churn_rate
    );
    if let Some(s) = &r.steady {
        let _ = writeln!(
            w,
            "| steady state ({} s idle) | controller requests {}; all API server requests {} (scheduler, the API server's own leases, our scrapes); controller CPU {:.3} s |",
            args.steady_seconds, s.controller, s.all, r.steady_cpu
        );
    }
    let _ = writeln!(
        w,
        "| final controller | peak RSS {}, RSS {} at the end; {} after SIGTERM |",
        mib(r.final_usage.peak_rss_kib),
        mib(r.final_usage.rss_kib),
        r.final_exit
    );
    let _ = writeln!(
        w,
        "\nThe controller runs as ServiceAccount `{BENCH_NS}/{CONTROLLER_SA}`, the reference as `{BENCH_NS}/{REFERENCE_SA}`; \
         FlowSchemas `{CONTROLLER_FS}` / `{REFERENCE_FS}` put each in priority level `{}` and make \
         `apiserver_flowcontrol_dispatched_requests_total` count exactly its requests. Latencies run from the moment the bench sends \
         the status patch to the moment its own watch sees the new labels (or the Event).",
        args.priority_level
    );
    if let Some(p) = &r.placement {
        let _ = writeln!(
            w,
            "\n## Placement\n\n{} gated Windows pods created at {}/s in each of two batches, {} distinct images on a local registry; from the create request to the moment a watch sees our gate gone.\n\n| measure | result | target | met |\n|---|---|---|---|",
            p.pods,
            args.placement_rate,
            PLACE_IMAGES.len()
        );
        let _ = writeln!(
            w,
            "| gate-to-placed, cold cache (first pod of each image): p50 / p99 (max) | {} / {} ({}) | | |",
            secs(p.cold.p50),
            secs(p.cold.p99),
            secs(p.cold.max)
        );
        let _ = writeln!(
            w,
            "| gate-to-placed, warm cache ({} pods): p50 / p99 (max) | {} / {} ({}) | p99 < 1 s | {} |",
            p.warm.n,
            secs(p.warm.p50),
            secs(p.warm.p99),
            secs(p.warm.max),
            verdict(p.warm.p99 < Duration::from_secs(1))
        );
        let _ = writeln!(
            w,
            "| registry requests per distinct image (both batches) | {:.2} ({} requests for {} image reads; {} in the warm batch) | one resolution per image within the TTL | {} |",
            p.registry_requests / PLACE_IMAGES.len() as f64,
            p.registry_requests,
            p.resolutions,
            p.registry_requests_warm,
            verdict(p.registry_requests_warm == 0.0)
        );
    }
    if !r.growth.is_empty() || !r.growth_missing.is_empty() {
        let _ = writeln!(
            w,
            "\n## Growth\n\nA controller started with every label right, watching N nodes (`--node-selector` on the tier label) and all P pods, until ready and quiet.\n\n| N | P | ready | peak RSS | RSS when quiet | CPU | controller requests | LIST requests |\n|---|---|---|---|---|---|---|---|"
        );
        for g in &r.growth {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {:.2} s | {} | {} |",
                g.nodes,
                g.pods,
                secs(g.ready),
                mib(g.peak_rss_kib),
                mib(g.quiet_rss_kib),
                g.cpu_seconds,
                g.requests,
                g.lists
            );
        }
        for (what, rss_kib) in [
            ("peak RSS", (|g| g.peak_rss_kib) as fn(&GrowthPoint) -> u64),
            ("RSS when quiet (kept)", |g| g.quiet_rss_kib),
        ] {
            let (per_node, per_pod) = marginals(&r.growth, rss_kib);
            for (p, kib) in per_node {
                let _ = writeln!(w, "\nMarginal {what} per node at P = {p}: {kib:.2} KiB.");
            }
            for (n, bytes) in per_pod {
                let _ = writeln!(
                    w,
                    "\nMarginal {what} per pod seen at N = {n}: {bytes:.1} bytes."
                );
            }
        }
        for m in &r.growth_missing {
            let _ = writeln!(w, "\nNot measured: {m}.");
        }
    }
    if !r.wrong.is_empty() || !r.failures.is_empty() {
        let _ = writeln!(w, "\n## Problems\n");
        for f in &r.failures {
            let _ = writeln!(w, "- {f}");
        }
        for f in r.wrong.iter().take(20) {
            let _ = writeln!(w, "- wrong labels: {f}");
        }
    }
    md
}

// ------------------------------------------------------------------------------------------ main

#[tokio::main]
async fn main() -> Result<()> {
    let _ = started();
    let mut args = Args::parse();
    if args.quick {
        args.nodes = 50;
        args.pods = 200;
        args.detect_pods = 10;
        args.steady_seconds = 5;
        let _ = QUIET.set(Duration::from_secs(1));
    }
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        let stem = args
            .report
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bench".into());
        args.report
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{stem}.work"))
    });
    std::fs::create_dir_all(&work_dir)?;
    anyhow::ensure!(
        args.controller.exists(),
        "controller binary {} not found (cargo build --release)",
        args.controller.display()
    );
    let keys = LabelKeys::default();
    let admin = Client::try_default()
        .await
        .context("admin client from KUBECONFIG")?;
    let version = admin
        .apiserver_version()
        .await
        .context("the control plane does not answer")?;
    let existing = Api::<Node>::all(admin.clone())
        .list(
            &ListParams::default()
                .labels(&format!("{BENCH_LABEL}=1"))
                .limit(1),
        )
        .await?;
    if !existing.items.is_empty() {
        bail!(
            "the cluster already has bench nodes; run scripts/bench, which starts a fresh control plane"
        );
    }
    let mut versions = vec![
        (
            "Kubernetes (kube-apiserver)".to_owned(),
            version.git_version.clone(),
        ),
        (
            "osbuild-controller".to_owned(),
            command_line(&args.controller.to_string_lossy(), &["--version"]),
        ),
        ("rustc".to_owned(), command_line("rustc", &["--version"])),
        (
            "source".to_owned(),
            format!(
                "git {}",
                command_line("git", &["describe", "--always", "--dirty"])
            ),
        ),
    ];
    if let Some(bindir) = &args.bindir {
        versions.push((
            "etcd".to_owned(),
            command_line(&bindir.join("etcd").to_string_lossy(), &["--version"]),
        ));
    }
    log(format!(
        "N={} nodes, P={} pods against {} ({}); work dir {}",
        args.nodes,
        args.pods,
        admin_url().unwrap_or_default(),
        version.git_version,
        work_dir.display()
    ));

    let (controller_kubeconfig, reference_kubeconfig) =
        setup_identities(&admin, &args, &work_dir).await?;
    let defs = node_defs(args.nodes);
    let mut r = Results {
        nodes: args.nodes,
        windows: defs.iter().filter(|d| d.os == "windows").count(),
        pods: args.pods,
        ..Default::default()
    };

    // ---- create
    r.create_nodes = create_nodes(
        &admin,
        &defs,
        0,
        &args.growth_nodes,
        args.create_concurrency,
    )
    .await?;
    r.create_pods = create_pods(
        &admin,
        &defs,
        args.pods,
        &args.growth_pods,
        !args.no_pod_status,
        args.create_concurrency,
    )
    .await?;

    if args.setup_only {
        log(format!(
            "setup done; the controller's kubeconfig is {}",
            controller_kubeconfig.display()
        ));
        return Ok(());
    }

    let tracker = Arc::new(Tracker::default());
    spawn_node_watch(admin.clone(), tracker.clone());
    while !tracker.synced() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle_timeout = Duration::from_secs(120 + args.nodes as u64 / 5);

    // ---- cold start
    let before = ApiMetrics::scrape(&admin).await?;
    let t0 = Instant::now();
    for def in &defs {
        tracker.expect(&def.name, expected_labels(def.os, &def.kernel, &keys), t0);
    }
    let _ = tracker.take();
    log("cold start: starting the controller");
    let mut controller =
        ControllerProcess::spawn(&args, &controller_kubeconfig, &work_dir, "cold")?;
    r.cold_ready = controller
        .wait_ready(settle_timeout)
        .await?
        .duration_since(t0);
    tracker
        .wait_settled(
            "cold start: nodes labelled",
            r.windows as u64,
            settle_timeout,
        )
        .await?;
    let (_, last) = tracker.take();
    r.cold_start = last.map_or(Duration::ZERO, |l| l.duration_since(t0));
    r.cold_usage = controller.usage();
    controller.wait_quiet(quiet(), settle_timeout).await?;
    r.cold = Some(requests(&before, &ApiMetrics::scrape(&admin).await?));
    r.cold_label_writes = controller.metric("osbuild_label_writes_total").await;
    let (status, usage) = controller.stop().await?;
    r.cold_usage.peak_rss_kib = usage.peak_rss_kib;
    r.cold_exit = status.to_string();
    log(format!(
        "cold start: {} (ready {}), peak RSS {}",
        secs(r.cold_start),
        secs(r.cold_ready),
        mib(usage.peak_rss_kib)
    ));

    // ---- restart with every label right: no writes
    let before = ApiMetrics::scrape(&admin).await?;
    let t0 = Instant::now();
    let mut controller =
        ControllerProcess::spawn(&args, &controller_kubeconfig, &work_dir, "restart")?;
    r.restart_ready = controller
        .wait_ready(settle_timeout)
        .await?
        .duration_since(t0);
    controller.wait_quiet(quiet(), settle_timeout).await?;
    r.restart = Some(requests(&before, &ApiMetrics::scrape(&admin).await?));
    r.restart_label_writes = controller.metric("osbuild_label_writes_total").await;
    let (_, usage) = controller.stop().await?;
    r.restart_usage = usage;
    log(format!(
        "restart: ready after {}, {} label writes",
        secs(r.restart_ready),
        r.restart_label_writes
    ));

    // ---- the same restart with paged lists, the fallback where the server refuses to stream
    if !args.no_paged_restart {
        let before = ApiMetrics::scrape(&admin).await?;
        let t0 = Instant::now();
        let mut controller = ControllerProcess::spawn_with(
            &args,
            &controller_kubeconfig,
            &work_dir,
            "restart-paged",
            &["--initial-list=paged".to_owned()],
        )?;
        r.restart_paged_ready = controller
            .wait_ready(settle_timeout)
            .await?
            .duration_since(t0);
        controller.wait_quiet(quiet(), settle_timeout).await?;
        r.restart_paged = Some(requests(&before, &ApiMetrics::scrape(&admin).await?));
        let (_, usage) = controller.stop().await?;
        r.restart_paged_usage = usage;
        log(format!(
            "restart with paged lists: ready after {}",
            secs(r.restart_paged_ready)
        ));
    }

    // ---- the reference, once per concurrency
    let reference_client = client_from(&reference_kubeconfig).await;
    for &concurrency in &args.reference_concurrency {
        log(format!(
            "reference (concurrency {}): removing our labels (apply of the empty set under our field manager)",
            concurrency_name(concurrency)
        ));
        let since = Instant::now();
        for def in &defs {
            tracker.expect(&def.name, BTreeMap::new(), since);
        }
        remove_labels(&admin, &defs, args.create_concurrency).await?;
        tracker
            .wait_settled(
                "reference: labels removed",
                r.windows as u64,
                settle_timeout,
            )
            .await?;
        let before = ApiMetrics::scrape(&admin).await?;
        let t0 = Instant::now();
        for def in &defs {
            tracker.expect(&def.name, expected_labels(def.os, &def.kernel, &keys), t0);
        }
        let _ = tracker.take();
        let writes = reference_loop(&reference_client, &keys, concurrency).await?;
        let answered = t0.elapsed();
        tracker
            .wait_settled(
                "reference: nodes labelled",
                r.windows as u64,
                settle_timeout,
            )
            .await?;
        let (_, last) = tracker.take();
        let run = ReferenceRun {
            concurrency,
            writes,
            answered,
            labelled: last.map_or(Duration::ZERO, |l| l.duration_since(t0)),
            requests: requests(&before, &ApiMetrics::scrape(&admin).await?),
        };
        log(format!(
            "reference (concurrency {}): {}",
            concurrency_name(concurrency),
            secs(run.labelled)
        ));
        r.references.push(run);
        controller_quiet_pause().await;
    }
    drop(reference_client);
    r.reference = r
        .references
        .first()
        .map_or(Duration::ZERO, |run| run.labelled);

    // ---- the controller that stays: churn, detection, placement, steady state
    let registry = if args.placement_pods > 0 {
        Some(Registry::start(&work_dir)?)
    } else {
        None
    };
    let final_flags: Vec<String> = registry
        .as_ref()
        .map(|r| vec!["--registry-insecure".to_owned(), r.plain.clone()])
        .unwrap_or_default();
    let before = ApiMetrics::scrape(&admin).await?;
    let t0 = Instant::now();
    let mut controller = ControllerProcess::spawn_with(
        &args,
        &controller_kubeconfig,
        &work_dir,
        "final",
        &final_flags,
    )?;
    r.final_ready = controller
        .wait_ready(settle_timeout)
        .await?
        .duration_since(t0);
    controller.wait_quiet(quiet(), settle_timeout).await?;
    r.final_start = Some(requests(&before, &ApiMetrics::scrape(&admin).await?));

    let churn_count = ((args.nodes as f64 * args.churn_percent / 100.0).round() as usize).max(1);
    let changes: Vec<(String, String)> = defs
        .iter()
        .filter(|d| d.kernel.starts_with("10.0.17763."))
        .take(churn_count)
        .enumerate()
        .map(|(i, d)| (d.name.clone(), format!("10.0.20348.{}", REV_20348[i % 6])))
        .collect();
    r.churn_nodes = changes.len();
    r.churn_paced = churn(
        &admin,
        &tracker,
        &keys,
        &changes,
        args.churn_rate,
        args.create_concurrency,
        "churn (paced)",
    )
    .await?;
    controller.wait_quiet(quiet(), settle_timeout).await?;
    let revert: Vec<(String, String)> = changes
        .iter()
        .map(|(name, _)| {
            let def = defs.iter().find(|d| d.name == *name).expect("churned node");
            (name.clone(), def.kernel.clone())
        })
        .collect();
    r.churn_burst = churn(
        &admin,
        &tracker,
        &keys,
        &revert,
        0,
        args.create_concurrency,
        "churn (burst)",
    )
    .await?;
    log(format!(
        "churn: paced p99 {}, burst p99 {}",
        secs(r.churn_paced.p99),
        secs(r.churn_burst.p99)
    ));
    controller.wait_quiet(quiet(), settle_timeout).await?;

    r.detect = detection(&admin, &defs, args.detect_pods).await?;
    log(format!("detection: p99 {}", secs(r.detect.p99)));

    if let Some(registry) = &registry {
        apply_placement_policy(&args)?;
        let results = placement(&admin, &args, &controller, &registry.plain).await?;
        log(format!(
            "placement: cold p99 {}, warm p99 {}, {:.2} registry requests per distinct image",
            secs(results.cold.p99),
            secs(results.warm.p99),
            results.registry_requests / PLACE_IMAGES.len() as f64
        ));
        r.failures.extend(results.failures.iter().cloned());
        r.placement = Some(results);
    }

    controller.wait_quiet(quiet(), settle_timeout).await?;
    log(format!("steady state: {} s idle", args.steady_seconds));
    let before = ApiMetrics::scrape(&admin).await?;
    let cpu_before = controller.usage().cpu_seconds;
    let progress = Progress::start("steady state", args.steady_seconds);
    for s in 1..=args.steady_seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress.set(s);
    }
    progress.finish();
    r.steady = Some(requests(&before, &ApiMetrics::scrape(&admin).await?));
    r.steady_cpu = controller.usage().cpu_seconds - cpu_before;
    let (status, usage) = controller.stop().await?;
    r.final_usage = usage;
    r.final_exit = status.to_string();

    if args.growth {
        growth(&admin, &args, &controller_kubeconfig, &work_dir, &mut r).await?;
        let plot = args.plot.clone().unwrap_or_else(|| {
            let stem = args
                .report
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "bench".into());
            args.report
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{stem}-growth.png"))
        });
        draw_growth(&plot, &r.growth)?;
        log(format!("growth plot written to {}", plot.display()));
    }

    // ---- correctness checks (performance targets are reported, not enforced)
    r.wrong = tracker.wrong();
    let cold = r.cold.as_ref().expect("cold");
    if cold.patch_nodes_ok as usize != r.windows {
        r.failures.push(format!(
            "cold start wrote {} times for {} Windows nodes",
            cold.patch_nodes_ok, r.windows
        ));
    }
    for (what, requests) in [
        ("restart", &r.restart),
        ("start after the reference", &r.final_start),
    ] {
        let writes = requests.as_ref().map_or(-1.0, |c| c.patch_nodes);
        if writes != 0.0 {
            r.failures.push(format!(
                "{what}: {writes} node patches with every label right"
            ));
        }
    }
    let streamed_lists = r.restart.as_ref().map_or(-1.0, |c| c.lists);
    let streaming_asked = !args
        .controller_arg
        .iter()
        .any(|a| a.contains("initial-list"));
    if streaming_asked && streamed_lists != 0.0 {
        r.failures.push(format!(
            "restart with streaming lists: {streamed_lists} list requests (expected none)"
        ));
    }
    for (what, exit) in [("cold", &r.cold_exit), ("final", &r.final_exit)] {
        if !exit.contains("exit status: 0") {
            r.failures
                .push(format!("{what} controller exit after SIGTERM: {exit}"));
        }
    }

    let text = report(&args, &r, &versions);
    std::fs::write(&args.report, &text)
        .with_context(|| format!("write {}", args.report.display()))?;
    println!("{text}");
    log(format!("report written to {}", args.report.display()));
    if !r.wrong.is_empty() || !r.failures.is_empty() {
        bail!(
            "correctness problems: {} wrong label sets, {:?}",
            r.wrong.len(),
            r.failures
        );
    }
    Ok(())
}

fn admin_url() -> Option<String> {
    let config = Kubeconfig::read().ok()?;
    config.clusters.first()?.cluster.as_ref()?.server.clone()
}
