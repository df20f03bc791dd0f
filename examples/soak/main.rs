//! The chaos soak (issue 16, docs/reliability.md): three replicas with `--leader-elect` under background
//! churn and a fault every 20-40 s, judged by witnesses the controller does not control: an independent
//! checker with its own watches, the API server's audit log, and the processes themselves. Run it with
//! `scripts/soak` (CI mode, 3 minutes) or `scripts/soak --long` (20 minutes); `--seed N` replays a run's
//! schedule. It fails (exit 1) on any violated invariant, printing the seed and the checker's report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod audit;
mod checker;
mod faults;
mod placement;
mod replicas;
mod rss;
mod verdict;
mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use osbuild_testkit::faults::Proxy;
use osbuild_testkit::{ControlPlane, repo_root, token_kubeconfig};
use rand::SeedableRng;
use rand_xorshift::XorShiftRng;
use serde_json::{Value, json};

use checker::Checker;
use replicas::{Flags, NAMES, Replica};
use rss::{RssSample, led_at, rss_growth};
use verdict::{Invariant, Violation, violation};
use workload::{ChurnStats, Sizes, Workload};

#[derive(Debug, Parser)]
#[command(
    about = "Chaos soak of osbuild-controller: three replicas, random faults, independent witnesses"
)]
struct Args {
    /// 20 minutes, 1,000 nodes and 10,000 pods, faults every 20-40 s (default: the CI mode, 3 minutes).
    #[arg(long)]
    long: bool,
    /// The seed of the fault schedule and the churn (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Soak duration in seconds (overrides the mode's).
    #[arg(long)]
    duration: Option<u64>,
    /// Write the report (markdown) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw the replicas' RSS over time (PNG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

const LEASE_DURATION: Duration = Duration::from_secs(8);
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(30);

fn audit_policy() -> &'static str {
    // Metadata for every request of a ServiceAccount (only the replicas run as one), nothing else.
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\nrules:\n  - level: Metadata\n    userGroups: [\"system:serviceaccounts\"]\n  - level: None\n"
}

/// The controller's RBAC exactly as manifests/base and manifests/components/placement (the default
/// install) have it, bound to the three ServiceAccounts.
async fn grant_manifests(client: &kube::Client, prefix: &str, namespace: &str) {
    let read = |path: &str| std::fs::read_to_string(repo_root().join(path)).unwrap();
    let mut cluster_role: Value =
        serde_norway::from_str(&read("manifests/base/clusterrole.yaml")).unwrap();
    cluster_role["metadata"] = json!({"name": format!("{prefix}-controller")});
    let mut role: Value = serde_norway::from_str(&read("manifests/base/role.yaml")).unwrap();
    role["metadata"] =
        json!({"name": "osbuild-controller-leader-election", "namespace": namespace});
    let subjects: Vec<Value> = NAMES
        .iter()
        .map(|n| json!({"kind": "ServiceAccount", "name": format!("soak-{n}"), "namespace": namespace}))
        .collect();
    let pp = PostParams::default();
    Api::<ClusterRole>::all(client.clone())
        .create(&pp, &serde_json::from_value(cluster_role).unwrap())
        .await
        .unwrap();
    // Placement's rights, exactly as manifests/components/placement adds them.
    let mut placement_role: Value =
        serde_norway::from_str(&read("manifests/components/placement/clusterrole.yaml")).unwrap();
    placement_role["metadata"] = json!({"name": format!("{prefix}-placement")});
    Api::<ClusterRole>::all(client.clone())
        .create(&pp, &serde_json::from_value(placement_role).unwrap())
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&pp, &serde_json::from_value(json!({
            "metadata": {"name": format!("{prefix}-placement")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{prefix}-placement")},
            "subjects": subjects})).unwrap())
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&pp, &serde_json::from_value(json!({
            "metadata": {"name": format!("{prefix}-controller")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{prefix}-controller")},
            "subjects": subjects})).unwrap())
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(&pp, &serde_json::from_value(role).unwrap())
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&pp, &serde_json::from_value(json!({
            "metadata": {"name": "osbuild-controller-leader-election"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "osbuild-controller-leader-election"},
            "subjects": subjects})).unwrap())
        .await
        .unwrap();
}

fn granted() -> std::collections::BTreeSet<audit::Access> {
    let read = |path: &str| std::fs::read_to_string(repo_root().join(path)).unwrap();
    let mut set = audit::granted(&read("manifests/base/clusterrole.yaml"));
    set.extend(audit::granted(&read("manifests/base/role.yaml")));
    set.extend(audit::granted(&read(
        "manifests/components/placement/clusterrole.yaml",
    )));
    set
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let (duration, sizes, gap) = if args.long {
        (
            1200,
            Sizes {
                windows: 800,
                linux: 100,
                ephemeral: 100,
                pods: 10_000,
                rate: 8.0,
                placement_rate: 2.0,
                placement_keep: Duration::from_secs(120),
            },
            (20.0, 40.0),
        )
    } else {
        // CI: sized for 2 shared cores; gaps short enough that all seven kinds fit in 3 minutes.
        (
            180,
            Sizes {
                windows: 100,
                linux: 20,
                ephemeral: 30,
                pods: 500,
                rate: 4.0,
                placement_rate: 1.0,
                placement_keep: Duration::from_secs(60),
            },
            (20.0, 25.0),
        )
    };
    let duration = args.duration.unwrap_or(duration) as f64;
    let schedule = faults::schedule(seed, duration, gap);
    let mode = if args.long { "long" } else { "ci" };
    eprintln!(
        "[soak] seed {seed} ({mode} mode, {duration}s); replay: scripts/soak{} --seed {seed}",
        if args.long { " --long" } else { "" }
    );
    for f in &schedule {
        eprintln!("[soak]   at {:>5.1}s: {}", f.at, f.kind.name());
    }

    // ---------------------------------------------------------------- control plane with audit logging
    let work = repo_root().join(format!("target/soak/{seed}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let policy = work.join("audit-policy.yaml");
    std::fs::write(&policy, audit_policy()).unwrap();
    let audit_log = work.join("audit.log");
    let apiserver_args = format!(
        "--audit-policy-file={} --audit-log-path={} --audit-log-maxsize=4000 --audit-log-maxbackup=0 \
         --watch-cache=false --etcd-compaction-interval=1s",
        policy.display(),
        audit_log.display()
    );
    let cp = ControlPlane::up("soak", &apiserver_args, "").await;
    let env = cp.env("soak").await;
    let namespace = env.namespace.clone();
    eprintln!(
        "[soak] control plane {} (audit log {}), namespace {namespace}",
        cp.dir.display(),
        audit_log.display()
    );

    // ---------------------------------------------------------------- placement: registries and the policy
    let registries = tokio::task::spawn_blocking(osbuild_testkit::registries)
        .await
        .unwrap();
    placement::setup(
        &env.client,
        &cp.kubeconfig,
        &namespace,
        &env.prefix,
        registries,
    )
    .await;
    eprintln!(
        "[soak] registries {} (plain) and {} (TLS, htpasswd); the placement policy gates Windows pods",
        registries.plain_host(),
        registries.secure_host()
    );

    // ---------------------------------------------------------------- identities, exactly the manifests' rights
    grant_manifests(&env.client, &env.prefix, &namespace).await;
    let mut replicas = Vec::new();
    let flags = Flags {
        selector: env.node_selector(),
        namespace: namespace.clone(),
        lease_duration: LEASE_DURATION,
        registry_insecure: registries.plain_host().to_owned(),
        registry_ca: registries.get("REGISTRY_CA").to_owned(),
    };
    for name in NAMES {
        let sa = format!("soak-{name}");
        Api::<ServiceAccount>::namespaced(env.client.clone(), &namespace)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
            )
            .await
            .unwrap();
        let direct = work.join(format!("{sa}.kubeconfig"));
        token_kubeconfig(&env.client, &cp.kubeconfig, &namespace, &sa, &direct).await;
        let proxy = Proxy::start(cp.apiserver_addr()).await;
        let text = std::fs::read_to_string(&direct).unwrap().replace(
            &format!("https://127.0.0.1:{}", cp.apiserver_port),
            &format!("https://127.0.0.1:{}", proxy.port),
        );
        let via = work.join(format!("{sa}-via-proxy.kubeconfig"));
        std::fs::write(&via, text).unwrap();
        replicas.push(Replica::new(name, via, proxy, &work));
    }

    // ---------------------------------------------------------------- workload, checker, replicas
    let mut rng = XorShiftRng::seed_from_u64(seed);
    let mut workload = Workload::new(env.client.clone(), &env.prefix, &namespace);
    let t = Instant::now();
    workload.populate(&sizes, &mut rng).await;
    eprintln!(
        "[soak] created {} nodes and {} pods in {:.0?}",
        sizes.windows + sizes.linux + sizes.ephemeral,
        sizes.pods,
        t.elapsed()
    );
    let checker = Checker::start(
        &env.client,
        &env.node_selector(),
        &namespace,
        "osbuild-controller",
    );
    for r in &mut replicas {
        r.spawn(&flags);
    }
    let replicas = Arc::new(Mutex::new(replicas));
    let t = Instant::now();
    let mut violations: Vec<Violation> = Vec::new();
    loop {
        if checker.node_count() > 0 && checker.unconverged().is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(180) {
            violations.push(violation(
                Invariant::Convergence,
                format!(
                    "initial convergence: not converged after 180 s: {}",
                    checker.unconverged_detail(20)
                ),
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let initial_convergence = t.elapsed();
    eprintln!("[soak] initial convergence in {initial_convergence:.1?}");

    // ---------------------------------------------------------------- health sampler
    let stop = Arc::new(AtomicBool::new(false));
    let health_violations: Arc<Mutex<Vec<Violation>>> = Arc::default();
    let rss: Arc<Mutex<Vec<RssSample>>> = Arc::default();
    let soak_start = Instant::now();
    let sampler = {
        let (replicas, stop, health_violations, rss) = (
            replicas.clone(),
            stop.clone(),
            health_violations.clone(),
            rss.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                {
                    let mut replicas = replicas.lock().unwrap();
                    for (i, r) in replicas.iter_mut().enumerate() {
                        if let Some(exit) = r.exited() {
                            health_violations
                                .lock()
                                .unwrap()
                                .push(violation(Invariant::ReplicaExit, exit));
                        }
                        if let Some(memory) = r.memory() {
                            rss.lock().unwrap().push(RssSample {
                                at: soak_start.elapsed().as_secs_f64(),
                                wall: k8s_openapi::jiff::Timestamp::now(),
                                replica: i,
                                incarnation: r.incarnation,
                                memory,
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    // ---------------------------------------------------------------- churn and faults
    let stats = Arc::new(ChurnStats::default());
    let churn = tokio::spawn(workload.churn(
        seed.wrapping_add(1),
        sizes.rate,
        checker.clone(),
        stats.clone(),
        stop.clone(),
    ));
    let placement_stats = Arc::new(placement::PlacementStats::default());
    let placement_churn = tokio::spawn(placement::churn(
        env.client.clone(),
        namespace.clone(),
        env.prefix.clone(),
        registries,
        seed.wrapping_add(2),
        sizes.placement_rate,
        sizes.placement_keep,
        checker.clone(),
        placement_stats.clone(),
        stop.clone(),
    ));
    let ctx = faults::Context {
        cp: &cp,
        client: env.client.clone(),
        replicas: &replicas,
        checker: &checker,
        flags: &flags,
        namespace: &namespace,
        lease_duration: LEASE_DURATION,
        problems: Arc::default(),
    };
    let mut injected: Vec<(f64, faults::Kind, String, f64)> = Vec::new();
    for fault in &schedule {
        let wait = fault.at - soak_start.elapsed().as_secs_f64();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        let started = soak_start.elapsed().as_secs_f64();
        let what = faults::inject(*fault, &ctx).await;
        let took = soak_start.elapsed().as_secs_f64() - started;
        eprintln!(
            "[soak] {started:>6.1}s {} ({what}), healed after {took:.1}s",
            fault.kind.name()
        );
        injected.push((started, fault.kind, what, took));
    }
    let rest = duration - soak_start.elapsed().as_secs_f64();
    if rest > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(rest)).await;
    }
    stop.store(true, Ordering::SeqCst);
    violations.extend(ctx.problems.lock().unwrap().iter().cloned());
    let _ = churn.await;
    let _ = placement_churn.await;
    let _ = sampler.await;
    let last_fault_end = Instant::now();

    // ---------------------------------------------------------------- convergence after the last fault
    let mut final_convergence = None;
    while last_fault_end.elapsed() < CONVERGENCE_LIMIT * 2 {
        if checker.unconverged().is_empty() {
            final_convergence = Some(last_fault_end.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match final_convergence {
        Some(t) if t <= CONVERGENCE_LIMIT => {}
        Some(t) => violations.push(violation(
            Invariant::Convergence,
            format!(
                "converged {t:.1?} after the last fault and churn (as the checker's watch saw them), over {CONVERGENCE_LIMIT:?}"
            ),
        )),
        None => violations.push(violation(
            Invariant::Convergence,
            format!(
                "not converged {:?} after the last fault and churn (as the checker's watch saw them): {}",
                CONVERGENCE_LIMIT * 2,
                checker.unconverged_detail(20)
            ),
        )),
    }
    eprintln!("[soak] converged after the last fault in {final_convergence:.1?}");
    // Never gated forever: every pod the policy gated loses our gate within the same bound.
    let mut all_placed = None;
    let mut still_gated = Vec::new();
    while last_fault_end.elapsed() < CONVERGENCE_LIMIT {
        still_gated = checker.still_gated();
        if still_gated.is_empty() {
            all_placed = Some(last_fault_end.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if all_placed.is_none() {
        violations.push(violation(
            Invariant::StillGated,
            format!(
                "pods still gated {CONVERGENCE_LIMIT:?} after the last fault and churn: {still_gated:?}"
            ),
        ));
    }
    eprintln!("[soak] every gated pod placed {all_placed:.1?} after the last fault");
    // Events of the episodes still in progress: give the leader the same bound.
    let settle = Instant::now();
    while settle.elapsed() < CONVERGENCE_LIMIT {
        let (v, _) = checker::judge_events(&checker.lock());
        if v.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // ---------------------------------------------------------------- process health
    let mut clean_exits = Vec::new();
    {
        let mut replicas = replicas.lock().unwrap();
        for r in replicas.iter_mut() {
            if let Some(exit) = r.exited() {
                health_violations
                    .lock()
                    .unwrap()
                    .push(violation(Invariant::ReplicaExit, exit));
            }
            clean_exits.push(r.terminate());
        }
    }
    violations.extend(health_violations.lock().unwrap().iter().cloned());
    violations.extend(
        clean_exits
            .into_iter()
            .flatten()
            .map(|e| violation(Invariant::ReplicaExit, e)),
    );

    // ---------------------------------------------------------------- witnesses
    let state = checker.lock();
    violations.extend(state.violations.iter().cloned());
    let (event_violations, episodes) = checker::judge_events(&state);
    violations.extend(event_violations);
    let placed = checker::judge_placement(&state);
    violations.extend(placed.violations.iter().cloned());
    if placed.placed == 0 {
        violations.push(violation(
            Invariant::PlacementUnexercised,
            "no gated pod was placed: placement never worked",
        ));
    }
    let terms = checker::terms(&state.lease);
    let requests = audit::read(&audit_log, &namespace);
    let granted = granted();
    let renew_deadline = LEASE_DURATION * 2 / 3;
    let judgement = audit::judge(&requests, &terms, renew_deadline, &granted);
    violations.extend(judgement.violations.iter().cloned());
    // The placement's writes (patches of `place-` pods) are among the governed writes judged above.
    let placement_writes: BTreeMap<&str, usize> = requests
        .iter()
        .filter(|r| {
            audit::is_leader_write(&r.access)
                && r.access.1 == "pods"
                && r.name.starts_with(placement::POD_PREFIX)
        })
        .fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.replica.as_str()).or_default() += 1;
            m
        });
    if placement_writes.is_empty() {
        violations.push(violation(
            Invariant::PlacementUnexercised,
            "the audit log holds no patch of a placement pod by a replica",
        ));
    }
    if requests.is_empty() {
        violations.push(violation(
            Invariant::AuditEmpty,
            "the audit log holds no request of the replicas",
        ));
    }
    let rss = rss.lock().unwrap();
    // Every sample with its role, kept with the logs (target/soak/<seed>/rss.csv) for a look at a growth.
    let csv: String =
        std::iter::once("seconds,replica,incarnation,leader,mib,anon_mib,file_mib\n".to_owned())
            .chain(rss.iter().map(|s| {
                format!(
                    "{:.1},{},{},{},{:.2},{:.2},{:.2}\n",
                    s.at,
                    NAMES[s.replica],
                    s.incarnation,
                    led_at(&terms, s.replica, s.wall),
                    s.memory.rss,
                    s.memory.anon,
                    s.memory.file
                )
            }))
            .collect();
    let _ = std::fs::write(work.join("rss.csv"), csv.clone());
    // A passing soak deletes its work dir: the samples behind a written report stay next to it.
    if let Some(report) = &args.report {
        let _ = std::fs::write(report.with_extension("rss.csv"), csv);
    }
    let rss_growth = rss_growth(&rss, &terms);
    if args.long {
        for g in &rss_growth {
            if g.growth > 0.10 {
                violations.push(violation(
                    Invariant::RssGrowth,
                    format!(
                        "replica {} RSS grew {:.0}% over the soak ({})",
                        NAMES[g.replica],
                        g.growth * 100.0,
                        g.compared.describe()
                    ),
                ));
            }
        }
    }

    // ---------------------------------------------------------------- report
    let mut r = String::new();
    writeln!(
        r,
        "## Soak run: seed {seed}, {mode} mode, {duration:.0} s\n"
    )
    .unwrap();
    writeln!(
        r,
        "Replay: `scripts/soak{} --seed {seed}`. {} nodes ({} Windows with pods, {} Linux, {} Windows joining and leaving), {} pods, three replicas (`--leader-elect --lease-duration {}s --force-conflicts`), each its own ServiceAccount with exactly the rights of manifests/base and manifests/components/placement; the placement policy on, Windows pods of {} test images on loopback registries.\n",
        if args.long { " --long" } else { "" },
        sizes.windows + sizes.linux + sizes.ephemeral,
        sizes.windows,
        sizes.linux,
        sizes.ephemeral,
        sizes.pods,
        LEASE_DURATION.as_secs(),
        placement::IMAGES.len()
    )
    .unwrap();
    let binary = std::env::var("OSBUILD_CONTROLLER_BIN").unwrap_or_default();
    writeln!(
        r,
        "Controller binary: `{}` ({}).\n",
        binary
            .rsplit_once("/target/")
            .map_or(binary.as_str(), |(_, tail)| tail),
        if binary.contains("-linux-musl/") {
            "the image's static musl build: run with `scripts/soak --musl`"
        } else {
            "the host's glibc build"
        }
    )
    .unwrap();
    writeln!(
        r,
        "### Faults injected\n\n| at (s) | fault | what | healed after (s) |\n|---|---|---|---|"
    )
    .unwrap();
    for (at, kind, what, took) in &injected {
        writeln!(r, "| {at:.0} | {} | {what} | {took:.1} |", kind.name()).unwrap();
    }
    let mut by_kind: BTreeMap<faults::Kind, usize> = BTreeMap::new();
    for (_, kind, _, _) in &injected {
        *by_kind.entry(*kind).or_default() += 1;
    }
    writeln!(
        r,
        "\nBy kind: {}.\n",
        by_kind
            .iter()
            .map(|(k, n)| format!("{} × {n}", k.name()))
            .collect::<Vec<_>>()
            .join("; ")
    )
    .unwrap();
    let o = Ordering::Relaxed;
    writeln!(
        r,
        "### Background churn\n\n{} actions ({} failed during faults): {} kernelVersion changes, {} nodes joined, {} left, our label deleted by hand {} times and overwritten {} times, {} pod failures started, {} recovered.\n",
        stats.actions.load(o), stats.errors.load(o), stats.kernel_changes.load(o), stats.joins.load(o), stats.leaves.load(o),
        stats.label_deletes.load(o), stats.label_overwrites.load(o), stats.pod_failures.load(o), stats.pod_recoveries.load(o)
    )
    .unwrap();
    writeln!(
        r,
        "### Placement churn\n\n{} Windows pods created ({:.1}/s, each deleted after {:?}): {} admitted gated, {} ungated (the policy not loaded yet after a kube-apiserver restart), {} deleted, {} requests failed during faults.\n",
        placement_stats.created.load(o), sizes.placement_rate, sizes.placement_keep,
        placement_stats.created_gated.load(o), placement_stats.created_ungated.load(o),
        placement_stats.deleted.load(o), placement_stats.errors.load(o)
    )
    .unwrap();
    let latencies: Vec<f64> = state.latencies.iter().map(|(_, l)| *l).collect();
    let transitions = state.lease.iter().map(|l| l.transitions).max().unwrap_or(0)
        - state.lease.iter().map(|l| l.transitions).min().unwrap_or(0);
    writeln!(r, "### Witnesses\n").unwrap();
    writeln!(r, "| what | measured |\n|---|---|").unwrap();
    writeln!(
        r,
        "| node observations by the checker | {} ({} changes of our labels) |",
        state.observations, state.label_changes
    )
    .unwrap();
    writeln!(
        r,
        "| wrong label sets (not the current or previous kernelVersion's) | {} |",
        state.violations.len()
    )
    .unwrap();
    writeln!(
        r,
        "| initial convergence | {:.1} s |",
        initial_convergence.as_secs_f64()
    )
    .unwrap();
    writeln!(r, "| labels matching a new kernelVersion, p50 / p99 / max | {:.2} / {:.2} / {:.2} s ({} changes) |", percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 1.0), latencies.len()).unwrap();
    writeln!(
        r,
        "| hand edits repaired, p50 / max | {:.2} / {:.2} s ({}){} |",
        percentile(&state.tamper_repairs, 0.5),
        percentile(&state.tamper_repairs, 1.0),
        state.tamper_repairs.len(),
        state
            .slowest_repair
            .as_ref()
            .map(|(_, node, at)| format!("; the slowest: node {node}, edited at {at:.0} s"))
            .unwrap_or_default()
    )
    .unwrap();
    writeln!(
        r,
        "| convergence after the last fault (limit 30 s) | {} |",
        final_convergence.map_or("not converged".into(), |t| format!(
            "{:.1} s",
            t.as_secs_f64()
        ))
    )
    .unwrap();
    writeln!(
        r,
        "| the checker's pod watch: lists started / completed / errors; first list complete after | {} / {} / {}; {} |",
        state.pod_watch.lists_started,
        state.pod_watch.lists_done,
        state.pod_watch.errors,
        state
            .pod_watch
            .first_list_done
            .map_or("never".into(), |t| format!("{t:.1} s"))
    )
    .unwrap();
    writeln!(
        r,
        "| mismatch episodes / OSVersionMismatch Events | {episodes} / {} |",
        state.events.values().map(|e| e.count).sum::<i32>()
    )
    .unwrap();
    writeln!(
        r,
        "| pods gated / placed (selection judged; of them off every node, no build runs all their images) / deleted before placed / still gated | {} / {} ({}) / {} / {} |",
        placed.gated, placed.placed, placed.nowhere, placed.deleted_while_gated, placed.still_gated
    )
    .unwrap();
    writeln!(
        r,
        "| gate to placed (checker's view), p50 / p99 / max | {:.2} / {:.2} / {:.2} s |",
        percentile(&placed.gate_to_placed, 0.5),
        percentile(&placed.gate_to_placed, 0.99),
        percentile(&placed.gate_to_placed, 1.0)
    )
    .unwrap();
    writeln!(
        r,
        "| placed with a selection where an image does not run | {} |",
        verdict::count(&placed.violations, Invariant::PlacementSelection)
    )
    .unwrap();
    writeln!(
        r,
        "| every gated pod placed after the last fault (limit 30 s) | {} |",
        all_placed.map_or("no".into(), |t| format!("{:.1} s", t.as_secs_f64()))
    )
    .unwrap();
    writeln!(
        r,
        "| leader terms / Lease transitions | {} / {transitions} |",
        terms.len()
    )
    .unwrap();
    writeln!(
        r,
        "| replicas' requests in the audit log | {} |",
        judgement.requests
    )
    .unwrap();
    writeln!(
        r,
        "| leader writes by replica (nodes, pods, events) | {} |",
        judgement
            .writes_by_replica
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    writeln!(
        r,
        "| placement writes (patches of gated pods) by replica | {} |",
        placement_writes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    writeln!(
        r,
        "| writes outside the writer's terms (+ renew deadline {renew_deadline:?}) | {} |",
        verdict::count(&judgement.violations, Invariant::WriteOutsideTerm)
    )
    .unwrap();
    writeln!(
        r,
        "| granted by manifests/ but never used | {} |",
        if judgement.unused.is_empty() {
            "none".into()
        } else {
            format!("{:?}", judgement.unused)
        }
    )
    .unwrap();
    for g in &rss_growth {
        writeln!(
            r,
            "| RSS of replica {} (longest-lived process): growth over its life, {} | {:+.1}% |",
            NAMES[g.replica],
            g.compared.describe(),
            g.growth * 100.0
        )
        .unwrap();
    }
    writeln!(
        r,
        "\n### Memory of each process, by role\n\nMean RSS (of it anonymous) in MiB over each stretch \
         of consecutive samples in one role (L leader, f follower), seconds since the start; every sample \
         is in rss.csv.\n"
    )
    .unwrap();
    for ((replica, incarnation), stretches) in rss::stretches(&rss, &terms) {
        let list: Vec<String> = stretches
            .iter()
            .map(|s| {
                format!(
                    "{} {:.0}-{:.0} s {:.1} ({:.1})",
                    if s.leader { "L" } else { "f" },
                    s.from,
                    s.to,
                    s.rss,
                    s.anon
                )
            })
            .collect();
        writeln!(r, "- {}-{incarnation}: {}", NAMES[replica], list.join(", ")).unwrap();
    }
    writeln!(r, "\n### Access per replica (audit log)\n").unwrap();
    for (replica, used) in &judgement.used_by_replica {
        let list: Vec<String> = used
            .iter()
            .map(|(g, res, v)| {
                format!(
                    "{v} {}{res}",
                    if g.is_empty() {
                        String::new()
                    } else {
                        format!("{g}/")
                    }
                )
            })
            .collect();
        writeln!(r, "- {replica}: {}", list.join(", ")).unwrap();
    }
    writeln!(r, "\n### Verdict\n").unwrap();
    // Every violation, grouped by kind, in the run's directory (kept when the soak fails).
    let violations_file = work.join("violations.txt");
    std::fs::write(&violations_file, verdict::file_text(&violations)).unwrap();
    r.push_str(&verdict::markdown(&violations, &violations_file));
    println!("{r}");
    if let Some(path) = &args.report {
        std::fs::write(path, &r).unwrap();
    }
    if let Some(path) = &args.plot {
        plot(path, &rss, &terms);
    }
    drop(state);
    if !violations.is_empty() {
        eprintln!(
            "[soak] FAILED: {} violated invariants ({}); seed {seed} (replay: scripts/soak{} --seed {seed}); logs and audit log in {}",
            violations.len(),
            verdict::by_kind(&violations)
                .iter()
                .map(|(k, v)| format!("{}: {}", k.key(), v.len()))
                .collect::<Vec<_>>()
                .join(", "),
            if args.long { " --long" } else { "" },
            work.display()
        );
        std::process::exit(1);
    }
    eprintln!("[soak] passed; seed {seed}");
    let _ = std::fs::remove_dir_all(&work);
}

/// RSS (MiB) of each replica over the soak's seconds, one colour per replica (a, b, c: red, blue, green),
/// thick while it led, a gap where a process was killed and restarted. No text: plotters' text needs
/// system fonts.
fn plot(
    path: &std::path::Path,
    samples: &[RssSample],
    terms: &[(
        String,
        k8s_openapi::jiff::Timestamp,
        k8s_openapi::jiff::Timestamp,
    )],
) {
    use plotters::prelude::*;
    let x_max = samples.iter().map(|s| s.at).fold(1.0, f64::max);
    let y_max = samples.iter().map(|s| s.memory.rss).fold(1.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (800, 300)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .unwrap();
    // Grid: a line every 10 MiB, and one every 60 s.
    let mut y = 0.0;
    while y <= y_max {
        chart
            .draw_series(LineSeries::new(
                [(0.0, y), (x_max, y)],
                &RGBColor(225, 225, 225),
            ))
            .unwrap();
        y += 10.0;
    }
    let mut x = 0.0;
    while x <= x_max {
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, y_max)],
                &RGBColor(235, 235, 235),
            ))
            .unwrap();
        x += 60.0;
    }
    let colours = [RED, BLUE, GREEN];
    for (replica, colour) in colours.iter().enumerate() {
        let mut incarnations: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.replica == replica) {
            incarnations
                .entry(s.incarnation)
                .or_default()
                .push((s.at, s.memory.rss));
        }
        for points in incarnations.into_values() {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .unwrap();
        }
        // Each stretch of consecutive samples taken while the replica led, drawn again, thick.
        let mut stretch: Vec<(f64, f64)> = Vec::new();
        let mut previous: Option<u32> = None;
        for s in samples.iter().filter(|s| s.replica == replica) {
            if !led_at(terms, replica, s.wall) || previous != Some(s.incarnation) {
                if stretch.len() > 1 {
                    chart
                        .draw_series(LineSeries::new(
                            std::mem::take(&mut stretch),
                            colour.stroke_width(5),
                        ))
                        .unwrap();
                }
                stretch.clear();
            }
            if led_at(terms, replica, s.wall) {
                stretch.push((s.at, s.memory.rss));
            }
            previous = Some(s.incarnation);
        }
        if stretch.len() > 1 {
            chart
                .draw_series(LineSeries::new(stretch, colour.stroke_width(5)))
                .unwrap();
        }
    }
    root.present().unwrap();
}
