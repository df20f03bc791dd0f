//! What the controllers read from a Node, as plain accessors and one derived summary ([`NodeFacts`]) that
//! the pod half and placement use. Pure: no I/O. [`NodeInputs`] lets the same decisions read a full `Node`
//! (CLI, tests, the bench) and the Node index's compact [`IndexedNode`](crate::indexed_node::IndexedNode).

use k8s_openapi::api::core::v1::Node;

use crate::core::catalog::release_for_build;
use crate::core::compat::process_isolation_builds;
use crate::core::labels::{LabelKeys, osbuild_value};
use crate::core::version::{KernelVersion, WindowsVersion, parse_kernel_version};

/// The kubelet's OS label; either it or `status.nodeInfo.operatingSystem` marks a Windows node.
pub const OS_LABEL: &str = "kubernetes.io/os";

/// The inputs of every node decision.
pub trait NodeInputs {
    /// The node reports Windows (`status.nodeInfo.operatingSystem`) or carries `kubernetes.io/os=windows`.
    fn is_windows(&self) -> bool;
    /// `status.nodeInfo.kernelVersion`, empty when not reported.
    fn kernel_version(&self) -> &str;
    /// The node carries our ignore annotation.
    fn is_opted_out(&self, keys: &LabelKeys) -> bool;
}

impl NodeInputs for Node {
    fn is_windows(&self) -> bool {
        is_windows(self)
    }
    fn kernel_version(&self) -> &str {
        kernel_version(self)
    }
    fn is_opted_out(&self, keys: &LabelKeys) -> bool {
        is_opted_out(self, keys)
    }
}

pub fn is_windows(node: &Node) -> bool {
    let reported = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .is_some_and(|i| i.operating_system.eq_ignore_ascii_case("windows"));
    let labelled = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OS_LABEL))
        .is_some_and(|os| os.eq_ignore_ascii_case("windows"));
    reported || labelled
}

pub fn kernel_version(node: &Node) -> &str {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map_or("", |i| i.kernel_version.as_str())
}

pub fn is_opted_out(node: &Node, keys: &LabelKeys) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(&keys.ignore_annotation()))
}

/// The Windows version in the node's kernelVersion, if it parses as one (whatever the node's OS label).
fn kernel_windows_version<N: NodeInputs + ?Sized>(node: &N) -> Option<WindowsVersion> {
    match parse_kernel_version(node.kernel_version()) {
        Ok(KernelVersion::Windows(parsed)) => Some(parsed.version),
        _ => None,
    }
}

/// A Windows node's version: the one fact placement needs of every node, for every pod, so without the
/// rest of [`node_facts`] (and its allocations).
pub fn windows_version<N: NodeInputs + ?Sized>(node: &N) -> Option<WindowsVersion> {
    kernel_windows_version(node).filter(|_| node.is_windows())
}

/// What the pod half needs to know of the node a pod runs on, derived from the index (never from the node
/// controller, so each half can be read alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub windows: bool,
    /// The host's version when its kernelVersion parsed.
    pub version: Option<WindowsVersion>,
    pub osbuild: Option<String>,
    pub release: Option<&'static str>,
    /// Image builds the host runs with process isolation.
    pub process_isolation_builds: Vec<u32>,
}

pub fn node_facts<N: NodeInputs + ?Sized>(node: &N) -> NodeFacts {
    let version = kernel_windows_version(node);
    NodeFacts {
        windows: node.is_windows(),
        version,
        osbuild: version.and_then(|v| osbuild_value(v).ok()),
        release: version
            .and_then(|v| release_for_build(v.build))
            .map(|r| r.id),
        process_isolation_builds: version
            .map(|v| process_isolation_builds(v.build))
            .unwrap_or_default(),
    }
}
