//! The one test kit of osbuild-controller: integration tests (tests/), fault tests and the benchmark
//! (examples/bench.rs) all use it, against real control planes (etcd, kube-apiserver, kube-scheduler built
//! from Go modules; see docs/control-plane.md and docs/testing.md).
//!
//! - [`cluster`]: the shared control plane (from `KUBECONFIG`, set by `scripts/test`, or started once per
//!   test process), clients, ServiceAccount token kubeconfigs, kubectl. If it cannot start, the test fails
//!   with the reason: never a skip.
//! - [`control_plane`]: a control plane of a test's own (faults, bench, soak) whose processes die with the test.
//! - [`env`]: a test's namespace, unique prefix and fixtures. Its Nodes carry `osbuild-test/run=<prefix>` and
//!   the controllers it starts watch only those, so tests running in parallel never see each other's nodes.
//!   There is no kubelet: fixtures set Node and Pod status through the status subresource, as a kubelet would.
//! - [`process`]: `osbuild-controller run` as a child process; [`metrics`]: scrapes parsed by a real
//!   Prometheus text parser; [`events`]: the Events a controller published; [`wait`]: eventually/consistently.
//! - [`faults`]: a partitioning proxy and an independent label auditor.
//! - [`placement`]: the placement tests' own control plane, with the cluster-wide admission policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

pub mod cluster;
pub mod control_plane;
pub mod env;
pub mod events;
pub mod faults;
pub mod metrics;
pub mod placement;
pub mod process;
pub mod rbac;
pub mod registries;
pub mod tools;
pub mod wait;

pub use cluster::{
    RUN_LABEL, apiserver_metric, client, client_from, client_without_retries, kubeconfig, kubectl,
    kubectl_with_stdin, repo_root, token_kubeconfig,
};
pub use control_plane::ControlPlane;
pub use env::{TestEnv, unique_prefix};
pub use events::EventQuery;
pub use metrics::Scrape;
pub use placement::{PLACEMENT_GATE, placement_kubeconfig};
pub use process::{
    Controller, controller_binary, free_port, free_ports, http_get, read_log, signal,
};
pub use rbac::{Access, access, allowed};
pub use registries::{Registries, registries};
pub use tools::{built_by, ensure_monitoring_crds, kubectl_on};
pub use wait::{TIMEOUT, consistently, eventually};
