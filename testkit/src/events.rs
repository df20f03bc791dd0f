//! Finding the Events a controller published (events.k8s.io/v1, as kube-runtime's Recorder writes them).

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};

/// Which Events to find in a namespace. Events about cluster-scoped objects (Nodes) land in `default`.
#[derive(Debug, Clone, Default)]
pub struct EventQuery<'a> {
    pub namespace: &'a str,
    /// The name of the object the Event is about.
    pub regarding: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// The controller that reported it (`osbuild-controller` for ours).
    pub reporter: Option<&'a str>,
}

impl<'a> EventQuery<'a> {
    pub fn new(namespace: &'a str) -> Self {
        Self {
            namespace,
            ..Self::default()
        }
    }

    pub fn regarding(mut self, name: &'a str) -> Self {
        self.regarding = Some(name);
        self
    }

    pub fn reason(mut self, reason: &'a str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Only Events our controller reported.
    pub fn ours(mut self) -> Self {
        self.reporter = Some(osbuild_controller::FIELD_MANAGER);
        self
    }

    /// The matching Events now; a failed list fails the test.
    pub async fn list(&self, client: &Client) -> Vec<Event> {
        Api::<Event>::namespaced(client.clone(), self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list events in {}: {e}", self.namespace))
            .items
            .into_iter()
            .filter(|e| self.matches(e))
            .collect()
    }

    fn matches(&self, event: &Event) -> bool {
        let regarding = event.regarding.as_ref().and_then(|r| r.name.as_deref());
        self.regarding.is_none_or(|name| regarding == Some(name))
            && self
                .reason
                .is_none_or(|r| event.reason.as_deref() == Some(r))
            && self
                .reporter
                .is_none_or(|r| event.reporting_controller.as_deref() == Some(r))
    }
}
