//! What the controller wants for one Node, decided from the Node alone (no I/O): the labels it should carry,
//! and whether a warning is due. The reconciler acts on the plan; tests check plans without a cluster.

use std::collections::BTreeMap;

use crate::core::catalog::release_for_build;
use crate::core::labels::{LabelKeys, LabelProblem, node_labels, osbuild_value};
use crate::core::version::{KernelVersion, parse_kernel_version};
use crate::node_info::NodeInputs;

/// Where a node stands, as far as our labels go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Not a Windows node: none of our labels belong on it.
    NotWindows,
    /// Opted out with our ignore annotation: none of our labels belong on it.
    OptedOut,
    /// Windows, but the kubelet has not reported a kernelVersion yet: wait, change nothing, say nothing.
    NotReported,
    /// Windows, and the kernelVersion cannot be understood: none of our labels, and a warning.
    Unparseable { message: String },
    /// Windows and parsed: these labels; `osbuild` is `None` when the needed revision is unknown.
    Labelled {
        osbuild: Option<String>,
        release: Option<&'static str>,
        problem: Option<LabelProblem>,
    },
}

/// A warning for the node's Events: a static reason and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWarning {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub state: NodeState,
    /// The complete set of our labels the node should carry; `None` means "leave the node as it is".
    pub desired: Option<BTreeMap<String, String>>,
}

impl NodePlan {
    pub fn warning(&self) -> Option<NodeWarning> {
        match &self.state {
            NodeState::Unparseable { message } => Some(NodeWarning {
                reason: "KernelVersionUnparseable",
                message: format!("{message}; no osbuild labels are set on this node"),
            }),
            NodeState::Labelled {
                problem: Some(problem),
                ..
            } => Some(NodeWarning {
                reason: "OSBuildRevisionUnknown",
                message: problem.to_string(),
            }),
            _ => None,
        }
    }
}

pub fn plan<N: NodeInputs + ?Sized>(node: &N, keys: &LabelKeys) -> NodePlan {
    let nothing = |state| NodePlan {
        state,
        desired: Some(BTreeMap::new()),
    };
    if !node.is_windows() {
        return nothing(NodeState::NotWindows);
    }
    if node.is_opted_out(keys) {
        return nothing(NodeState::OptedOut);
    }
    let kernel = node.kernel_version();
    let parsed = match parse_kernel_version(kernel) {
        Ok(KernelVersion::Windows(parsed)) => parsed,
        Ok(KernelVersion::NotReported) => {
            return NodePlan {
                state: NodeState::NotReported,
                desired: None,
            };
        }
        Ok(KernelVersion::Linux) => {
            return nothing(NodeState::Unparseable {
                message: format!(
                    "kernelVersion {kernel:?} is a Linux kernel release, but the node reports Windows"
                ),
            });
        }
        Err(err) => {
            return nothing(NodeState::Unparseable {
                message: err.to_string(),
            });
        }
    };
    let labels = node_labels(&parsed, keys);
    NodePlan {
        state: NodeState::Labelled {
            osbuild: osbuild_value(parsed.version).ok(),
            release: release_for_build(parsed.version.build).map(|r| r.id),
            problem: labels.problem,
        },
        desired: Some(labels.labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};

    fn node(os: &str, kernel: &str) -> Node {
        Node {
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo {
                    operating_system: os.into(),
                    kernel_version: kernel.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn windows_node_gets_labels() {
        let p = plan(&node("windows", "10.0.17763.3887"), &LabelKeys::default());
        let desired = p.desired.unwrap();
        assert_eq!(desired["beta.kubernetes.io/osbuild"], "17763");
        assert_eq!(
            p.state,
            NodeState::Labelled {
                osbuild: Some("17763".into()),
                release: Some("ltsc2019"),
                problem: None
            }
        );
    }

    #[test]
    fn linux_node_wants_none_of_our_labels() {
        let p = plan(&node("linux", "5.15.0-1049-azure"), &LabelKeys::default());
        assert_eq!(p.state, NodeState::NotWindows);
        assert_eq!(p.desired, Some(BTreeMap::new()));
        assert_eq!(p.warning(), None);
    }

    #[test]
    fn os_label_alone_marks_windows() {
        use crate::node_info::OS_LABEL;
        let mut n = node("", "10.0.20348.1");
        n.metadata.labels = Some([(OS_LABEL.to_owned(), "windows".to_owned())].into());
        assert!(matches!(
            plan(&n, &LabelKeys::default()).state,
            NodeState::Labelled { .. }
        ));
    }

    #[test]
    fn not_reported_waits_silently() {
        let p = plan(&node("windows", ""), &LabelKeys::default());
        assert_eq!(p.desired, None);
        assert_eq!(p.warning(), None);
    }

    #[test]
    fn unparseable_and_missing_revision_warn() {
        let p = plan(&node("windows", "6.2.09200.192"), &LabelKeys::default());
        assert_eq!(p.desired, Some(BTreeMap::new()));
        assert_eq!(p.warning().unwrap().reason, "KernelVersionUnparseable");
        let p = plan(&node("windows", "5.15.0-1049-azure"), &LabelKeys::default());
        assert!(
            p.warning()
                .unwrap()
                .message
                .contains("Linux kernel release")
        );
        let p = plan(&node("windows", "10.0.14393"), &LabelKeys::default());
        assert_eq!(p.warning().unwrap().reason, "OSBuildRevisionUnknown");
        assert!(
            !p.desired
                .unwrap()
                .contains_key("beta.kubernetes.io/osbuild")
        );
    }

    #[test]
    fn opt_out_wants_none_of_our_labels() {
        let keys = LabelKeys::default();
        let mut n = node("windows", "10.0.17763.1");
        n.metadata.annotations = Some([(keys.ignore_annotation(), "true".to_owned())].into());
        let p = plan(&n, &keys);
        assert_eq!(p.state, NodeState::OptedOut);
        assert_eq!(p.desired, Some(BTreeMap::new()));
    }
}
