//! The registry credentials of a pod (or pod template), as the kubelet finds them: its `imagePullSecrets`,
//! then its ServiceAccount's. A secret that is missing, unreadable or not a docker config is skipped and
//! reported: the others still count, and an image without a credential is read anonymously.

use k8s_openapi::api::core::v1::{PodSpec, Secret, ServiceAccount};
use kube::{Api, Client};

use crate::events::api_error_category;
use crate::registry::credentials::{Keyring, SecretFormat, parse_pull_secret};

/// A pull secret that could not be used, with the static category of why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub what: String,
    pub category: &'static str,
    pub detail: String,
}

impl Skipped {
    /// The read failed in a way that may pass (throttled, unreachable, a server error): the secret may
    /// well exist and be valid. Missing, forbidden or malformed secrets stay so until someone acts.
    pub fn may_pass(&self) -> bool {
        crate::events::may_pass(self.category)
    }
}

/// The keyring of a pod spec in `namespace`, and the secrets that were skipped.
pub async fn keyring(client: &Client, namespace: &str, spec: &PodSpec) -> (Keyring, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut names: Vec<String> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let account = spec
        .service_account_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match accounts.get_opt(&account).await {
        Ok(Some(sa)) => names.extend(sa.image_pull_secrets.into_iter().flatten().map(|r| r.name)),
        Ok(None) => {}
        Err(err) => skipped.push(Skipped {
            what: format!("serviceaccount {account}"),
            category: api_error_category(&err),
            detail: err.to_string(),
        }),
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut entries = Vec::new();
    for name in names.iter().filter(|n| !n.is_empty()) {
        let what = format!("secret {name}");
        let secret = match secrets.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                skipped.push(Skipped {
                    what,
                    category: "not_found",
                    detail: "no such secret".into(),
                });
                continue;
            }
            Err(err) => {
                skipped.push(Skipped {
                    what,
                    category: api_error_category(&err),
                    detail: err.to_string(),
                });
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
            skipped.push(Skipped {
                what,
                category: "invalid",
                detail: "not a docker config secret".into(),
            });
            continue;
        };
        match parse_pull_secret(format, &bytes.0) {
            Ok(pairs) => entries.extend(pairs),
            Err(err) => skipped.push(Skipped {
                what,
                category: "invalid",
                detail: err.to_string(),
            }),
        }
    }
    (Keyring::new(entries), skipped)
}
