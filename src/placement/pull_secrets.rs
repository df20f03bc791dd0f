//! The registry credentials of a gated pod, as the kubelet finds them: the pod's `imagePullSecrets`, then
//! its ServiceAccount's. A secret that is missing, unreadable or not a docker config is skipped (logged and
//! counted): the others still count, and an image without a credential is read anonymously.

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::{Api, ResourceExt};

use super::CONTROLLER;
use crate::events::api_error_category;
use crate::registry::credentials::{Keyring, SecretFormat, parse_pull_secret};
use crate::shared::Shared;

pub async fn keyring(shared: &Shared, pod: &Pod) -> Keyring {
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let mut names: Vec<String> = spec
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let accounts: Api<ServiceAccount> = Api::namespaced(shared.client.clone(), &namespace);
    match accounts.get_opt(&account).await {
        Ok(Some(sa)) => names.extend(sa.image_pull_secrets.into_iter().flatten().map(|r| r.name)),
        Ok(None) => {}
        Err(err) => {
            shared
                .metrics
                .api_error(CONTROLLER, api_error_category(&err));
            tracing::warn!(service_account = account, error = %err, "cannot read the pod's ServiceAccount for its pull secrets");
        }
    }
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), &namespace);
    let mut entries = Vec::new();
    for name in names.iter().filter(|n| !n.is_empty()) {
        let secret = match secrets.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                tracing::info!(secret = name, "pull secret not found; skipped");
                continue;
            }
            Err(err) => {
                shared
                    .metrics
                    .api_error(CONTROLLER, api_error_category(&err));
                tracing::warn!(secret = name, error = %err, "cannot read a pull secret; skipped");
                continue;
            }
        };
        let data = secret.data.unwrap_or_default();
        let found = [
            (".dockerconfigjson", SecretFormat::DockerConfigJson),
            (".dockercfg", SecretFormat::DockerCfg),
        ]
        .into_iter()
        .find_map(|(key, format)| data.get(key).map(|bytes| (format, bytes)));
        let Some((format, bytes)) = found else {
            tracing::info!(secret = name, "not a docker config secret; skipped");
            continue;
        };
        match parse_pull_secret(format, &bytes.0) {
            Ok(pairs) => entries.extend(pairs),
            Err(err) => {
                tracing::warn!(secret = name, error = %err, "unreadable pull secret; skipped");
            }
        }
    }
    Keyring::new(entries)
}
