//! The audit inside the controller (`run --audit-interval DURATION`, off by default): it runs the same audit
//! as the `audit` command ([`super::command::survey`]) every interval, and sooner when a workload or a node
//! changes (metadata watches, debounced: [`next_run`]), and exports the result:
//!
//! - `osbuild_workloads{verdict}`: the Windows workloads by verdict (all four verdicts, zeros included);
//! - `osbuild_workload_verdict{namespace, kind, name, verdict}`: 1 for each `at-risk` or `broken` workload
//!   only, so the series count is bounded by the workloads that need attention, not by the cluster;
//! - `osbuild_audit_runs_total{outcome}` and `osbuild_audit_last_success_timestamp_seconds`: whether the
//!   numbers above are current (a failed run keeps the previous result).
//!
//! Every replica audits and exports its own view (the audit only reads, like every replica's watches), so
//! a new leader has nothing to catch up on; the shipped alerts aggregate with `max by`. The gauges are
//! computed at scrape time from the last result ([`Snapshot`]), so a workload that is fixed or deleted
//! loses its series with the next audit.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};
use tokio_util::sync::CancellationToken;

use super::command::{Report, survey};
use super::verdict::Verdict;
use crate::events::watch_error_category;
use crate::metrics::{ComputedGauge, Metrics, NAMESPACE};
use crate::shared::Shared;
use crate::supervisor::Supervisor;
use crate::watches::LIST_PAGE_SIZE;

/// The loop's name in liveness and in `osbuild_reconcile_errors_total{controller}`, and the `resource` of
/// its watches' errors in `osbuild_watch_errors_total`.
pub const CONTROLLER: &str = "audit";
/// After a change, wait this long for the changes that usually come with it (a rollout touches a
/// Deployment, its ReplicaSets, ...) before auditing.
const SETTLE: Duration = Duration::from_secs(5);
/// The most a change can shorten the gap between two audits: a tenth of the interval, within these bounds.
const MIN_GAP_BOUNDS: (Duration, Duration) = (SETTLE, Duration::from_secs(60));

const VERDICTS: [Verdict; 4] = [
    Verdict::Ok,
    Verdict::AtRisk,
    Verdict::Broken,
    Verdict::Unknown,
];

/// The in-cluster audit's options.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// `--audit-interval`: time between the end of one audit and the start of the next.
    pub interval: Duration,
    /// `--namespace`: audit this namespace only; all when `None`.
    pub namespace: Option<String>,
}

/// A workload that needs attention, as its gauge names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flagged {
    pub namespace: String,
    pub kind: &'static str,
    pub name: String,
    pub verdict: Verdict,
}

/// What the gauges show: the last successful audit, reduced to what is exported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Workloads per verdict; every verdict present.
    pub by_verdict: BTreeMap<&'static str, i64>,
    /// The `at-risk` and `broken` workloads, sorted.
    pub flagged: Vec<Flagged>,
    /// When that audit finished.
    pub finished: Option<SystemTime>,
}

/// Reduces a report to the exported numbers: counts for every verdict, one entry per at-risk or broken
/// workload (never `ok` or `unknown` ones: those would make the series count grow with the cluster).
pub fn summarize(report: &Report, finished: SystemTime) -> Snapshot {
    let mut by_verdict: BTreeMap<&'static str, i64> =
        VERDICTS.iter().map(|v| (v.as_str(), 0)).collect();
    let mut flagged = Vec::new();
    for row in &report.workloads {
        *by_verdict.entry(row.verdict.as_str()).or_default() += 1;
        if matches!(row.verdict, Verdict::AtRisk | Verdict::Broken) {
            flagged.push(Flagged {
                namespace: row.namespace.clone(),
                kind: row.kind,
                name: row.name.clone(),
                verdict: row.verdict,
            });
        }
    }
    flagged.sort();
    flagged.dedup();
    Snapshot {
        by_verdict,
        flagged,
        finished: Some(finished),
    }
}

/// The last snapshot, shared by the loop (writer) and the collector (reader at scrape time).
#[derive(Debug, Clone, Default)]
pub struct LastAudit(Arc<Mutex<Option<Snapshot>>>);

impl LastAudit {
    pub fn set(&self, snapshot: Snapshot) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
    }

    pub fn get(&self) -> Option<Snapshot> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Computes the audit gauges from [`LastAudit`] at scrape time; nothing before the first audit finished.
pub struct AuditCollector {
    last: LastAudit,
    workloads: ComputedGauge,
    workload: ComputedGauge,
    last_success: ComputedGauge,
}

impl AuditCollector {
    pub fn new(last: LastAudit) -> prometheus::Result<Self> {
        Ok(Self {
            last,
            workloads: ComputedGauge::new(
                "workloads",
                "Windows workloads by the verdict of the last in-cluster audit (ok, at-risk, broken, unknown).",
                &["verdict"],
            )?,
            workload: ComputedGauge::new(
                "workload_verdict",
                "1 for each workload the last in-cluster audit found at-risk or broken (no series for ok and unknown ones).",
                &["namespace", "kind", "name", "verdict"],
            )?,
            last_success: ComputedGauge::new(
                "audit_last_success_timestamp_seconds",
                "When the last successful in-cluster audit finished (Unix time).",
                &[],
            )?,
        })
    }
}

impl Collector for AuditCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut desc = self.workloads.desc();
        desc.extend(self.workload.desc());
        desc.extend(self.last_success.desc());
        desc
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(snapshot) = self.last.get() else {
            return Vec::new();
        };
        let mut families = self.workloads.family(
            snapshot
                .by_verdict
                .iter()
                .map(|(verdict, count)| (vec![*verdict], *count)),
        );
        families.extend(self.workload.family(snapshot.flagged.iter().map(|f| {
            (
                vec![
                    f.namespace.as_str(),
                    f.kind,
                    f.name.as_str(),
                    f.verdict.as_str(),
                ],
                1,
            )
        })));
        let seconds = snapshot
            .finished
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        families.extend(self.last_success.family([(vec![], seconds)]));
        families
    }
}

/// Starts the loop; fails only when its metrics cannot be registered.
pub fn start(
    shared: &Arc<Shared>,
    options: AuditOptions,
    tasks: &mut Supervisor,
) -> anyhow::Result<()> {
    let last = LastAudit::default();
    shared
        .metrics
        .register(Box::new(AuditCollector::new(last.clone())?))?;
    let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
    let runs = IntCounterVec::new(
        opts(
            "audit_runs_total",
            "In-cluster audits, by outcome: ok, or error (a list failed; the gauges keep the previous result).",
        ),
        &["outcome"],
    )?;
    shared.metrics.register(Box::new(runs.clone()))?;
    tasks.spawn(
        CONTROLLER,
        run(shared.clone(), options, (last, runs), tasks.shutdown()),
    );
    Ok(())
}

/// When the next audit starts: `interval` after the last one ended, or, once something changed since the
/// last one started, `SETTLE` after that change; never sooner than the minimum gap after the last one ended
/// (a tenth of the interval, between 5 s and 1 min), so a busy cluster is not audited back to back.
pub fn next_run(
    ended: tokio::time::Instant,
    first_change: Option<tokio::time::Instant>,
    interval: Duration,
) -> tokio::time::Instant {
    let periodic = ended + interval;
    let Some(change) = first_change else {
        return periodic;
    };
    let gap = (interval / 10).clamp(MIN_GAP_BOUNDS.0, MIN_GAP_BOUNDS.1);
    periodic.min((change + SETTLE).max(ended + gap))
}

async fn run(
    shared: Arc<Shared>,
    options: AuditOptions,
    (last, runs): (LastAudit, IntCounterVec),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut changes = pin!(changes(&shared, options.namespace.as_deref()));
    loop {
        let audit = survey(
            &shared.client,
            &shared.registry,
            options.namespace.as_deref(),
            &[],
        );
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            result = audit => result,
            () = shutdown.cancelled() => return Ok(()),
        };
        match result {
            Ok(report) => {
                let snapshot = summarize(&report, SystemTime::now());
                tracing::info!(
                    workloads = report.workloads.len(),
                    at_risk = snapshot.by_verdict.get("at-risk").copied().unwrap_or(0),
                    broken = snapshot.by_verdict.get("broken").copied().unwrap_or(0),
                    unknown = snapshot.by_verdict.get("unknown").copied().unwrap_or(0),
                    duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "audit done"
                );
                last.set(snapshot);
                runs.with_label_values(&["ok"]).inc();
            }
            Err(err) => {
                // A list was refused or failed (RBAC, API server): keep the last result, try next time.
                shared.metrics.api_error(CONTROLLER, api_category(&err));
                runs.with_label_values(&["error"]).inc();
                tracing::warn!(
                    error = format!("{err:#}"),
                    "audit failed; the gauges keep the last result"
                );
            }
        }
        // Changes that arrive while an audit runs are taken after it: the audit may have listed before them.
        let ended = tokio::time::Instant::now();
        let mut first_change = None;
        loop {
            let at = next_run(ended, first_change, options.interval);
            tokio::select! {
                () = tokio::time::sleep_until(at) => break,
                Some(()) = changes.next() => {
                    first_change.get_or_insert_with(tokio::time::Instant::now);
                }
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// One item per change that matters to the audit (see [`Fingerprints`]) of an audited workload kind (in
/// `namespace`, or all) or of a Node, after each watch's initial list. Metadata only: the audit itself
/// reads the objects. A failing watch is counted and retried with backoff; the periodic audit goes on.
fn changes(shared: &Shared, namespace: Option<&str>) -> impl Stream<Item = ()> + use<> {
    let (client, metrics) = (&shared.client, &shared.metrics);
    let spec = |meta: &ObjectMeta| meta.generation.map_or(0, i64::cast_unsigned);
    let streams: Vec<BoxStream<'static, ()>> = vec![
        watch_changes(namespaced::<Deployment>(client, namespace), spec, metrics),
        watch_changes(namespaced::<StatefulSet>(client, namespace), spec, metrics),
        watch_changes(namespaced::<DaemonSet>(client, namespace), spec, metrics),
        watch_changes(namespaced::<ReplicaSet>(client, namespace), spec, metrics),
        watch_changes(namespaced::<Job>(client, namespace), spec, metrics),
        watch_changes(namespaced::<CronJob>(client, namespace), spec, metrics),
        watch_changes(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            |meta: &ObjectMeta| hash_of(&meta.labels),
            metrics,
        ),
    ];
    futures::stream::select_all(streams)
}

fn namespaced<K>(client: &kube::Client, namespace: Option<&str>) -> Api<PartialObjectMeta<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    std::hash::Hasher::finish(&hasher)
}

/// What of each watched object can change a verdict, to tell its changes from noise: a workload's
/// `metadata.generation` (it moves with every change of the spec, never with status updates such as replica
/// counts), a Node's labels (the selectors match them, and the osbuild labels move with its
/// kernelVersion). Pure: fed the watch's events as (object key, fingerprint).
#[derive(Debug, Default)]
pub struct Fingerprints {
    seen: HashMap<String, u64>,
    /// During a (re-)list: what it has listed so far.
    relisting: Option<HashMap<String, u64>>,
    listed_once: bool,
}

impl Fingerprints {
    /// Whether this event changes something the audit reads. The first list changes nothing (the audit
    /// reads the cluster as it is anyway); a re-list after a broken watch does if it differs from before.
    pub fn changed(&mut self, event: watcher::Event<(String, u64)>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply((key, print)) => {
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(key, print);
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let changed = self.listed_once && listed != self.seen;
                self.seen = listed;
                self.listed_once = true;
                changed
            }
            watcher::Event::Apply((key, print)) => self.seen.insert(key, print) != Some(print),
            watcher::Event::Delete((key, _)) => {
                self.seen.remove(&key);
                true
            }
        }
    }
}

/// A watch event reduced to (namespace/name, fingerprint).
fn keyed<K>(
    event: watcher::Event<PartialObjectMeta<K>>,
    fingerprint: fn(&ObjectMeta) -> u64,
) -> watcher::Event<(String, u64)> {
    let key = |o: &PartialObjectMeta<K>| {
        let meta = &o.metadata;
        let name = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        (name, fingerprint(meta))
    };
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(key(&o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(key(&o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(key(&o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn watch_changes<K>(
    api: Api<PartialObjectMeta<K>>,
    fingerprint: fn(&ObjectMeta) -> u64,
    metrics: &Metrics,
) -> BoxStream<'static, ()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let metrics = metrics.clone();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let mut prints = Fingerprints::default();
    watcher(api, watcher::Config::default().page_size(LIST_PAGE_SIZE))
        .default_backoff()
        .filter_map(move |event| {
            let changed = match event {
                Ok(event) => {
                    let keyed = keyed(event, fingerprint);
                    prints.changed(keyed).then_some(())
                }
                Err(err) => {
                    let category = watch_error_category(&err);
                    metrics
                        .watch_errors
                        .with_label_values(&[CONTROLLER, category])
                        .inc();
                    tracing::warn!(kind, category, error = %err, "audit watch failed; retrying with backoff (the periodic audit goes on)");
                    None
                }
            };
            std::future::ready(changed)
        })
        .boxed()
}

/// The static category of a failed audit, from the API error inside it when there is one.
fn api_category(err: &anyhow::Error) -> &'static str {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<kube::Error>())
        .map_or("client", crate::events::api_error_category)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::command::Row;

    fn row(namespace: &str, name: &str, verdict: Verdict) -> Row {
        Row {
            namespace: namespace.into(),
            kind: "Deployment",
            name: name.into(),
            images: vec!["example/app:ltsc2022".into()],
            verdict,
            nodes_that_fail: Vec::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn counts_every_verdict_and_flags_only_at_risk_and_broken() {
        let report = Report {
            workloads: vec![
                row("shop", "web", Verdict::Ok),
                row("shop", "api", Verdict::AtRisk),
                row("shop", "jobs", Verdict::Broken),
                row("ops", "private", Verdict::Unknown),
                row("ops", "agent", Verdict::Ok),
            ],
        };
        let snapshot = summarize(&report, SystemTime::UNIX_EPOCH);
        assert_eq!(
            snapshot.by_verdict,
            BTreeMap::from([("ok", 2), ("at-risk", 1), ("broken", 1), ("unknown", 1)])
        );
        let flagged: Vec<(&str, Verdict)> = snapshot
            .flagged
            .iter()
            .map(|f| (f.name.as_str(), f.verdict))
            .collect();
        assert_eq!(
            flagged,
            [("api", Verdict::AtRisk), ("jobs", Verdict::Broken)]
        );
    }

    #[test]
    fn changes_bring_the_next_audit_forward_but_not_back_to_back() {
        let ended = tokio::time::Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(next_run(ended, None, hour), ended + hour, "nothing changed");
        // A change long after the last audit: SETTLE after it.
        let late = ended + Duration::from_secs(600);
        assert_eq!(next_run(ended, Some(late), hour), late + SETTLE);
        // A change right after it: not before the minimum gap (a tenth of the hour, at most a minute).
        assert_eq!(
            next_run(ended, Some(ended), hour),
            ended + Duration::from_secs(60)
        );
        let two_minutes = Duration::from_secs(120);
        assert_eq!(
            next_run(ended, Some(ended), two_minutes),
            ended + Duration::from_secs(12)
        );
        // Never later than the periodic run, never sooner than SETTLE.
        let short = Duration::from_secs(3);
        assert_eq!(next_run(ended, Some(ended), short), ended + short);
        assert_eq!(
            next_run(ended, Some(ended), Duration::from_secs(20)),
            ended + SETTLE
        );
    }

    #[test]
    fn only_changes_of_what_the_audit_reads_count() {
        use watcher::Event;
        let mut prints = Fingerprints::default();
        let first_list = [
            Event::Init,
            Event::InitApply(("shop/web".to_owned(), 1)),
            Event::InitApply(("shop/api".to_owned(), 3)),
            Event::InitDone,
        ];
        assert!(
            first_list.into_iter().all(|e| !prints.changed(e)),
            "the first list is what the audit reads anyway"
        );
        assert!(
            !prints.changed(Event::Apply(("shop/web".to_owned(), 1))),
            "a status update: same generation"
        );
        assert!(
            prints.changed(Event::Apply(("shop/web".to_owned(), 2))),
            "a new spec"
        );
        assert!(
            prints.changed(Event::Apply(("shop/new".to_owned(), 1))),
            "a new object"
        );
        assert!(prints.changed(Event::Delete(("shop/api".to_owned(), 3))));
        // A re-list after a broken watch: a change only if the cluster differs from what was seen.
        let same = [
            Event::Init,
            Event::InitApply(("shop/web".to_owned(), 2)),
            Event::InitApply(("shop/new".to_owned(), 1)),
        ];
        assert!(same.into_iter().all(|e| !prints.changed(e)));
        assert!(!prints.changed(Event::InitDone));
        for e in [Event::Init, Event::InitApply(("shop/web".to_owned(), 2))] {
            assert!(!prints.changed(e));
        }
        assert!(
            prints.changed(Event::InitDone),
            "shop/new went while the watch was down"
        );
    }

    #[test]
    fn an_empty_cluster_still_exports_zeros() {
        let snapshot = summarize(&Report { workloads: vec![] }, SystemTime::UNIX_EPOCH);
        assert_eq!(snapshot.by_verdict.len(), 4);
        assert!(snapshot.by_verdict.values().all(|n| *n == 0));
        assert!(snapshot.flagged.is_empty());
    }

    #[test]
    fn the_collector_exports_the_last_snapshot_and_drops_fixed_workloads() {
        let last = LastAudit::default();
        // Through a registry, as a scrape reads it (it leaves out families without series).
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(AuditCollector::new(last.clone()).unwrap()))
            .unwrap();
        let text = || {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(), "", "nothing before the first audit");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        last.set(summarize(
            &Report {
                workloads: vec![row("shop", "api", Verdict::AtRisk)],
            },
            at,
        ));
        let exported = text();
        assert!(
            exported.contains(
                r#"osbuild_workload_verdict{kind="Deployment",name="api",namespace="shop",verdict="at-risk"} 1"#
            ),
            "{exported}"
        );
        assert!(
            exported.contains("osbuild_audit_last_success_timestamp_seconds 1700000000"),
            "{exported}"
        );
        last.set(summarize(
            &Report {
                workloads: vec![row("shop", "api", Verdict::Ok)],
            },
            at,
        ));
        let exported = text();
        assert!(
            !exported.contains("osbuild_workload_verdict{"),
            "{exported}"
        );
        assert!(
            exported.contains(r#"osbuild_workloads{verdict="ok"} 1"#),
            "{exported}"
        );
    }
}
