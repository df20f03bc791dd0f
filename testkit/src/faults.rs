//! Fault injection and independent witnesses:
//! - [`Proxy`]: a TCP proxy between the controller and the API server that can cut every connection and
//!   refuse new ones (a network partition), to make a watch reconnect from an old resourceVersion.
//! - [`Auditor`]: watches the test's nodes for the whole test and records every label set of ours that was
//!   never right for any state the node was seen in (a wrong label), judged by the library's pure `plan`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use osbuild_controller::core::labels::LabelKeys;
use osbuild_controller::nodes::plan::plan;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::env::TestEnv;

// ------------------------------------------------------------------------------------------ proxy

/// A TCP proxy to the API server. `cut` closes every connection and refuses new ones until `heal`.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (cut, accepted, connections) = (cut.clone(), accepted.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut connections = connections.lock().unwrap();
                    connections.retain(|t| !t.is_finished());
                    connections.push(task);
                }
            })
        };
        Self {
            port,
            cut,
            accepted,
            connections,
            accept,
        }
    }

    /// Connections proxied since the start (refused ones not counted).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ------------------------------------------------------------------------------------------ auditor

/// Our labels on a node.
pub fn ours(node: &Node) -> BTreeMap<String, String> {
    let keys = LabelKeys::default();
    node.labels()
        .iter()
        .filter(|(k, _)| keys.is_ours(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What the controller should put on the node as it is now (`None`: leave it alone, not reported yet).
pub fn desired(node: &Node) -> Option<BTreeMap<String, String>> {
    plan(node, &LabelKeys::default()).desired
}

/// Watches the nodes of a selector for the whole test. Our labels on a node must always be empty or the
/// complete desired set of some state the node has been seen in (labels lag their inputs, so an older
/// state's set is fine): anything else is a wrong label.
pub struct Auditor {
    state: Arc<Mutex<AuditState>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct AuditState {
    acceptable: HashMap<String, Vec<BTreeMap<String, String>>>,
    wrong: Vec<String>,
    observed: usize,
}

impl Auditor {
    pub fn start(client: Client, selector: &str) -> Self {
        let state: Arc<Mutex<AuditState>> = Arc::default();
        let api: Api<Node> = Api::all(client);
        let config = watcher::Config::default().labels(selector);
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut events = pin!(watcher(api, config).default_backoff());
                while let Some(event) = events.next().await {
                    if let Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = event
                    {
                        state.lock().unwrap().observe(&node);
                    }
                }
            })
        };
        Self { state, task }
    }

    pub fn wrong(&self) -> Vec<String> {
        self.state.lock().unwrap().wrong.clone()
    }

    pub fn observed(&self) -> usize {
        self.state.lock().unwrap().observed
    }

    pub fn assert_no_wrong_labels(&self) {
        let wrong = self.wrong();
        assert!(
            wrong.is_empty(),
            "{} wrong label sets seen:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
}

impl AuditState {
    fn observe(&mut self, node: &Node) {
        self.observed += 1;
        let name = node.name_any();
        let acceptable = self.acceptable.entry(name.clone()).or_default();
        if let Some(desired) = desired(node)
            && !acceptable.contains(&desired)
        {
            acceptable.push(desired);
        }
        let ours = ours(node);
        if !ours.is_empty() && !acceptable.contains(&ours) {
            let kernel = node
                .status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kernel_version.clone())
                .unwrap_or_default();
            self.wrong.push(format!(
                "{name} (kernelVersion {kernel:?}, rv {:?}): {ours:?}",
                node.resource_version()
            ));
        }
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether every node of the selector carries exactly the labels it should (nodes not reported yet are
/// skipped); returns the names of those that do not.
pub async fn unconverged(env: &TestEnv) -> Vec<String> {
    let nodes = env
        .nodes()
        .list(&ListParams::default().labels(&env.node_selector()))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    if nodes.is_empty() {
        return vec!["(no nodes listed)".into()];
    }
    nodes
        .iter()
        .filter(|n| desired(n).is_some_and(|d| d != ours(n)))
        .map(|n| n.name_any())
        .collect()
}
