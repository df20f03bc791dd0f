//! RBAC as the API server decides it: SubjectAccessReviews for a ServiceAccount, to check what an install
//! (kustomize or Helm) lets the controller do, and what it must not.

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

/// One access to ask a SubjectAccessReview about: `verb resource[.group][/subresource] [-n ns] [name]`.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

pub const fn access<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Access<'a> {
    Access {
        verb,
        group,
        resource,
        subresource: "",
        namespace: "",
        name: "",
    }
}

impl<'a> Access<'a> {
    pub const fn sub(mut self, subresource: &'a str) -> Self {
        self.subresource = subresource;
        self
    }
    pub const fn ns(mut self, namespace: &'a str) -> Self {
        self.namespace = namespace;
        self
    }
    pub const fn named(mut self, name: &'a str) -> Self {
        self.name = name;
        self
    }
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.verb, self.resource);
        if !self.group.is_empty() {
            s += &format!(".{}", self.group);
        }
        if !self.subresource.is_empty() {
            s += &format!("/{}", self.subresource);
        }
        if !self.name.is_empty() {
            s += &format!(" {}", self.name);
        }
        if !self.namespace.is_empty() {
            s += &format!(" -n {}", self.namespace);
        }
        s
    }
}

/// Whether the ServiceAccount `namespace/name` may do `access`, by a SubjectAccessReview with the groups a
/// ServiceAccount token carries.
pub async fn allowed(client: &Client, namespace: &str, name: &str, access: &Access<'_>) -> bool {
    let mut attributes =
        json!({"verb": access.verb, "group": access.group, "resource": access.resource});
    for (key, value) in [
        ("subresource", access.subresource),
        ("namespace", access.namespace),
        ("name", access.name),
    ] {
        if !value.is_empty() {
            attributes[key] = json!(value);
        }
    }
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": format!("system:serviceaccount:{namespace}:{name}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "resourceAttributes": attributes,
        }
    }))
    .unwrap();
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("SubjectAccessReview status")
        .allowed
}
