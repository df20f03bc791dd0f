//! Leader election with two (then three) controller processes against the real API server: only the
//! leader writes, followers stay ready, a stopped leader hands over at once, a dead one only once its lease
//! has run out. Timing is read from the Lease's own fields (renewTime, acquireTime, leaseTransitions), as
//! the replicas wrote them, never from the test's clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::{Controller, TIMEOUT, TestEnv, eventually};

const OSBUILD: &str = "beta.kubernetes.io/osbuild";
const LEASE_DURATION: Duration = Duration::from_secs(3);

fn args(env: &TestEnv) -> Vec<String> {
    vec![
        "--leader-elect".into(),
        "--lease-name".into(),
        format!("{}-lease", env.prefix),
        "--lease-namespace".into(),
        env.namespace.clone(),
        "--lease-duration".into(),
        format!("{}s", LEASE_DURATION.as_secs()),
    ]
}

async fn lease(env: &TestEnv) -> Option<Lease> {
    Api::<Lease>::namespaced(env.client.clone(), &env.namespace)
        .get_opt(&format!("{}-lease", env.prefix))
        .await
        .ok()?
}

async fn holder(env: &TestEnv) -> Option<String> {
    lease(env)
        .await?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// (renewTime, acquireTime, leaseTransitions) of the Lease now.
async fn record(env: &TestEnv) -> (Timestamp, Timestamp, i32) {
    let spec = lease(env).await.and_then(|l| l.spec).expect("the lease");
    (
        spec.renew_time.expect("renewTime").0,
        spec.acquire_time.expect("acquireTime").0,
        spec.lease_transitions.expect("leaseTransitions"),
    )
}

fn seconds_between(earlier: Timestamp, later: Timestamp) -> f64 {
    (later.as_millisecond() - earlier.as_millisecond()) as f64 / 1000.0
}

/// Our identity outside a pod is "<hostname>-<pid>".
fn held_by(holder: &Option<String>, controller: &Controller) -> bool {
    holder
        .as_deref()
        .is_some_and(|h| h.ends_with(&format!("-{}", controller.pid())))
}

async fn writes(controller: &Controller) -> f64 {
    controller
        .metric("osbuild_label_writes_total", &[])
        .await
        .unwrap_or(-1.0)
}

async fn wait_osbuild(env: &TestEnv, node: &str, value: &str) {
    eventually(&format!("{node} osbuild={value}"), TIMEOUT, || async {
        (env.labels(node).await.get(OSBUILD).map(String::as_str) == Some(value)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn only_the_leader_writes_and_leadership_moves_on_stop_and_on_death() {
    let env = TestEnv::new("leader").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    let args = args(&env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let a = Controller::start(&env, &args).await;
    eventually("a holds the lease", TIMEOUT, || async {
        held_by(&holder(&env).await, &a).then_some(())
    })
    .await;
    wait_osbuild(&env, &node, "17763").await;
    let b = Controller::start(&env, &args).await;
    assert_eq!(
        b.get("/readyz").await.0,
        200,
        "a follower is ready: its caches are warm"
    );

    // A change is written by the leader only.
    env.set_kernel_version(&node, "10.0.20348.2700").await;
    wait_osbuild(&env, &node, "20348").await;
    a.wait_metric("osbuild_label_writes_total", &[], 2.0).await;
    assert_eq!(writes(&b).await, 0.0, "the follower wrote");
    assert!(held_by(&holder(&env).await, &a));

    // A stopped leader releases the lease at once: the follower acquires it sooner after a's last renewal
    // than an expiry would allow, and the handover is one transition.
    let (a_renewal, _, transitions) = record(&env).await;
    assert!(a.terminate().success());
    eventually("b holds the lease", TIMEOUT, || async {
        held_by(&holder(&env).await, &b).then_some(())
    })
    .await;
    let (renewed_by_b, acquired_by_b, after) = record(&env).await;
    assert_eq!(after, transitions + 1, "one handover");
    assert!(renewed_by_b >= acquired_by_b);
    // Had a not released it, b would have waited a whole lease duration after a's last renewal.
    let gap = seconds_between(a_renewal, acquired_by_b);
    assert!(
        gap < LEASE_DURATION.as_secs_f64(),
        "b acquired {gap:.2}s after a's last renewal: the lease was not released"
    );
    env.set_kernel_version(&node, "10.0.26100.32995").await;
    wait_osbuild(&env, &node, "26100").await;
    b.wait_metric("osbuild_label_writes_total", &[], 1.0).await;

    // A leader that dies without releasing is replaced within the lease duration (plus one retry period
    // for each side to notice).
    let c = Controller::start(&env, &args).await;
    b.kill();
    let (b_last_renewal, _, transitions) = record(&env).await;
    eventually("c holds the lease", TIMEOUT, || async {
        held_by(&holder(&env).await, &c).then_some(())
    })
    .await;
    let (_, acquired_by_c, after) = record(&env).await;
    assert_eq!(after, transitions + 1, "one takeover");
    // Never before the dead leader's lease ran out (safety), and soon after (one retry period each side).
    let gap = seconds_between(b_last_renewal, acquired_by_c);
    let lease = LEASE_DURATION.as_secs_f64();
    assert!(
        gap >= lease,
        "c took over {gap:.2}s after b's last renewal: before the lease expired"
    );
    assert!(
        gap < lease + 2.0,
        "c took over {gap:.2}s after b's last renewal"
    );
    env.set_kernel_version(&node, "10.0.17763.3887").await;
    wait_osbuild(&env, &node, "17763").await;
    c.wait_metric("osbuild_label_writes_total", &[], 1.0).await;
    env.cleanup().await;
}
