//! The registry credentials of a gated pod (`crate::pull_secrets`: its own pull secrets, then its
//! ServiceAccount's). What had to be skipped is logged and counted under this loop; the rest still counts,
//! and an image without a credential is read anonymously. Reads that may pass are returned, so the
//! decision can wait for them rather than take an anonymous refusal for the registry's last word.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::CONTROLLER;
use crate::registry::credentials::Keyring;
use crate::shared::Shared;

/// The pod's keyring, and the secrets (or ServiceAccount) whose read failed in a way that may pass.
pub async fn keyring(shared: &Shared, pod: &Pod) -> (Keyring, Vec<String>) {
    let Some(spec) = pod.spec.as_ref() else {
        return (Keyring::new([]), Vec::new());
    };
    let namespace = pod.namespace().unwrap_or_default();
    let (keyring, skipped) = crate::pull_secrets::keyring(&shared.client, &namespace, spec).await;
    let mut unread = Vec::new();
    for skip in skipped {
        // A missing or malformed secret is the user's to fix, not an API failure of ours.
        if !matches!(skip.category, "not_found" | "invalid") {
            shared.metrics.api_error(CONTROLLER, skip.category);
        }
        tracing::warn!(what = %skip.what, category = skip.category, detail = %skip.detail, "pull secret skipped");
        if skip.may_pass() {
            unread.push(format!("{}: {}", skip.what, skip.category));
        }
    }
    (keyring, unread)
}
