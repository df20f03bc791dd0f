//! `osbuild-controller audit`: reads every Windows workload (Deployments, StatefulSets, DaemonSets,
//! ReplicaSets and Jobs without an owner, CronJobs, bare Pods), the nodes its pod template can land on and
//! its images' platforms from their registries, and gives each a verdict. The thin I/O driver around
//! [`super::schedule`], [`super::verdict`] and [`super::what_if`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use anyhow::Context as _;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use super::schedule::can_land;
use super::verdict::{Candidate, ImageRead, Verdict, judge};
use super::what_if::{WhatIf, assumed_version};
use crate::cli::{AuditArgs, OutputFormat};
use crate::core::runs_on::Isolation;
use crate::node_info::{OS_LABEL, is_windows, node_facts};
use crate::placement::is_hyperv_handler;
use crate::registry::{Freshness, Registry};

/// Objects per list request (the API server's pages; kube's default size).
const LIST_PAGE: u32 = 500;

/// One workload's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub namespace: String,
    pub kind: &'static str,
    pub name: String,
    pub images: Vec<String>,
    pub verdict: Verdict,
    pub nodes_that_fail: Vec<String>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub workloads: Vec<Row>,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        self.workloads.iter().all(|w| w.verdict == Verdict::Ok)
    }
}

/// A workload and its pod template.
struct Workload {
    namespace: String,
    kind: &'static str,
    name: String,
    spec: PodSpec,
}

pub async fn audit(args: &AuditArgs) -> anyhow::Result<Report> {
    let client = crate::run::client(&args.cluster).await?;
    let registry = Registry::new(args.registry.options())?;
    survey(
        &client,
        &registry,
        args.namespace.as_deref(),
        &args.if_nodes,
    )
    .await
}

/// One audit of the cluster as it is now: every Windows workload (of `namespace`, or all), its candidate
/// nodes and its images (from `registry`, cached), judged. Shared by the command and the in-cluster loop
/// ([`super::in_cluster`]). Fails only when a list fails; an unreadable image is an `unknown` verdict.
pub async fn survey(
    client: &Client,
    registry: &Registry,
    namespace: Option<&str>,
    what_ifs: &[WhatIf],
) -> anyhow::Result<Report> {
    let nodes: Vec<Node> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("cannot list nodes")?
        .items;
    let runtime_classes: HashMap<String, RuntimeClass> = Api::<RuntimeClass>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("cannot list runtimeclasses")?
        .items
        .into_iter()
        .map(|rc| (rc.name_any(), rc))
        .collect();
    let mut rows = Vec::new();
    for workload in workloads(client, namespace).await? {
        let runtime_class = workload
            .spec
            .runtime_class_name
            .as_ref()
            .and_then(|name| runtime_classes.get(name));
        let scheduling = runtime_class.and_then(|rc| rc.scheduling.as_ref());
        if !is_windows_template(&workload.spec, scheduling) {
            continue;
        }
        let isolation = match runtime_class {
            Some(rc) if is_hyperv_handler(&rc.handler) => Isolation::HyperV,
            _ => Isolation::Process,
        };
        let candidates = candidates(&nodes, &workload.spec, scheduling, what_ifs);
        rows.push(judge_workload(client, registry, workload, &candidates, isolation).await);
    }
    rows.sort_by(|a, b| {
        (a.verdict, &a.namespace, a.kind, &a.name).cmp(&(b.verdict, &b.namespace, b.kind, &b.name))
    });
    Ok(Report { workloads: rows })
}

async fn judge_workload(
    client: &Client,
    registry: &Registry,
    workload: Workload,
    candidates: &[Candidate],
    isolation: Isolation,
) -> Row {
    let images = images_of(&workload.spec);
    let (keyring, _skipped) =
        crate::pull_secrets::keyring(client, &workload.namespace, &workload.spec).await;
    let mut resolved = Vec::new();
    for image in &images {
        let read = registry
            .resolve(image, &keyring.lookup(image), Freshness::Cached)
            .await
            .map_err(|e| format!("{}: {}", e.category(), e.detail));
        resolved.push((image.as_str(), read));
    }
    let reads: Vec<(&str, ImageRead<'_>)> = resolved
        .iter()
        .map(|(image, read)| {
            let read = match read {
                Ok(image) => ImageRead::Platforms(&image.platforms),
                Err(why) => ImageRead::Unreadable(why.clone()),
            };
            (*image, read)
        })
        .collect();
    let judgement = judge(candidates, &reads, isolation);
    Row {
        namespace: workload.namespace,
        kind: workload.kind,
        name: workload.name,
        images,
        verdict: judgement.verdict,
        nodes_that_fail: judgement.nodes_that_fail,
        detail: judgement.detail,
    }
}

/// The Windows nodes the template can land on, with the version each runs (or is assumed to run).
fn candidates(
    nodes: &[Node],
    spec: &PodSpec,
    scheduling: Option<&k8s_openapi::api::node::v1::Scheduling>,
    what_ifs: &[WhatIf],
) -> Vec<Candidate> {
    let no_labels = BTreeMap::new();
    nodes
        .iter()
        .filter(|node| is_windows(node) && can_land(spec, scheduling, node))
        .map(|node| Candidate {
            name: node.name_any(),
            version: assumed_version(
                what_ifs,
                node.metadata.labels.as_ref().unwrap_or(&no_labels),
                node_facts(node).version,
            ),
        })
        .collect()
}

/// A Windows pod template: `spec.os.name: windows`, or it (or its RuntimeClass) selects
/// `kubernetes.io/os=windows` by nodeSelector or required node affinity.
pub fn is_windows_template(
    spec: &PodSpec,
    scheduling: Option<&k8s_openapi::api::node::v1::Scheduling>,
) -> bool {
    let windows = |v: &String| v.eq_ignore_ascii_case("windows");
    spec.os.as_ref().is_some_and(|os| windows(&os.name))
        || spec
            .node_selector
            .iter()
            .chain(scheduling.and_then(|s| s.node_selector.as_ref()))
            .any(|selector| selector.get(OS_LABEL).is_some_and(windows))
        || spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|required| {
                required.node_selector_terms.iter().any(|term| {
                    term.match_expressions.iter().flatten().any(|r| {
                        r.key == OS_LABEL
                            && r.operator == "In"
                            && r.values.iter().flatten().any(windows)
                    })
                })
            })
}

/// Every container and init container image, once each, in spec order.
fn images_of(spec: &PodSpec) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    for image in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter_map(|c| c.image.clone())
    {
        if !images.contains(&image) {
            images.push(image);
        }
    }
    images
}

async fn workloads(client: &Client, namespace: Option<&str>) -> anyhow::Result<Vec<Workload>> {
    let mut all = Vec::new();
    all.extend(
        list::<Deployment>(client, namespace, |d| d.spec.template.spec.clone(), false).await?,
    );
    all.extend(
        list::<StatefulSet>(client, namespace, |s| s.spec.template.spec.clone(), false).await?,
    );
    all.extend(
        list::<DaemonSet>(client, namespace, |d| d.spec.template.spec.clone(), false).await?,
    );
    all.extend(
        list::<ReplicaSet>(
            client,
            namespace,
            |r| r.spec.template.as_ref()?.spec.clone(),
            true,
        )
        .await?,
    );
    all.extend(
        list::<CronJob>(
            client,
            namespace,
            |c| c.spec.job_template.spec.as_ref()?.template.spec.clone(),
            false,
        )
        .await?,
    );
    all.extend(
        list::<Job>(
            client,
            namespace,
            |j| j.spec.as_ref()?.template.spec.clone(),
            true,
        )
        .await?,
    );
    all.extend(list::<Pod>(client, namespace, |p| p.spec.clone(), true).await?);
    Ok(all)
}

/// The workloads of one kind; with `unowned_only`, only those no other workload owns (a Deployment's
/// ReplicaSets, a CronJob's Jobs, controllers' Pods are audited through their owner).
async fn list<K>(
    client: &Client,
    namespace: Option<&str>,
    template: impl Fn(&K) -> Option<PodSpec>,
    unowned_only: bool,
) -> anyhow::Result<Vec<Workload>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let kind = K::kind(&K::DynamicType::default()).to_string();
    // Page by page, keeping only each workload's pod template: the objects themselves (pods' statuses,
    // managedFields) are dropped as each page is read.
    let mut params = ListParams::default().limit(LIST_PAGE);
    let mut workloads = Vec::new();
    loop {
        let page = api
            .list(&params)
            .await
            .with_context(|| format!("cannot list {kind}s"))?;
        workloads.extend(
            page.items
                .iter()
                .filter(|o| !unowned_only || o.owner_references().is_empty())
                .filter_map(|o| {
                    Some(Workload {
                        namespace: o.namespace().unwrap_or_default(),
                        kind: kind_name(&kind),
                        name: o.name_any(),
                        spec: template(o)?,
                    })
                }),
        );
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(workloads),
        }
    }
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "Deployment" => "Deployment",
        "StatefulSet" => "StatefulSet",
        "DaemonSet" => "DaemonSet",
        "ReplicaSet" => "ReplicaSet",
        "CronJob" => "CronJob",
        "Job" => "Job",
        _ => "Pod",
    }
}

/// The report as text (a table, worst first) or JSON.
pub fn render(report: &Report, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(report).unwrap_or_default(),
        OutputFormat::Text => {
            if report.workloads.is_empty() {
                return "no Windows workloads found".to_owned();
            }
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{:<9} {:<30} {:<40} DETAIL",
                "VERDICT", "NAMESPACE", "WORKLOAD"
            );
            for row in &report.workloads {
                let _ = writeln!(
                    out,
                    "{:<9} {:<30} {:<40} {}",
                    row.verdict.as_str(),
                    row.namespace,
                    format!("{}/{}", row.kind, row.name),
                    row.detail
                );
            }
            out.trim_end().to_owned()
        }
    }
}

/// `audit` for main: the report on stdout; exit 0 when every workload is ok, 1 otherwise, 2 on an error.
pub fn audit_command(args: &AuditArgs) -> (String, u8) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return (format!("cannot start the async runtime: {err}"), 2),
    };
    match runtime.block_on(audit(args)) {
        Ok(report) => {
            let code = u8::from(!report.all_ok());
            (render(&report, args.output.output), code)
        }
        Err(err) => (format!("{err:#}"), 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        let mut value = value;
        value["containers"] =
            json!([{"name": "app", "image": "x"}, {"name": "sidecar", "image": "x"}]);
        value["initContainers"] = json!([{"name": "init", "image": "y"}]);
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn windows_templates_by_os_selector_affinity_or_runtime_class() {
        assert!(is_windows_template(
            &spec(json!({"os": {"name": "windows"}})),
            None
        ));
        assert!(is_windows_template(
            &spec(json!({"nodeSelector": {"kubernetes.io/os": "windows"}})),
            None
        ));
        let affinity = spec(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}}}}),
        );
        assert!(is_windows_template(&affinity, None));
        let scheduling: k8s_openapi::api::node::v1::Scheduling =
            serde_json::from_value(json!({"nodeSelector": {"kubernetes.io/os": "windows"}}))
                .unwrap();
        assert!(is_windows_template(&spec(json!({})), Some(&scheduling)));
        assert!(!is_windows_template(
            &spec(json!({"nodeSelector": {"kubernetes.io/os": "linux"}})),
            None
        ));
        assert!(!is_windows_template(&spec(json!({})), None));
    }

    #[test]
    fn images_once_each_init_first() {
        assert_eq!(images_of(&spec(json!({}))), ["y", "x"]);
    }
}
