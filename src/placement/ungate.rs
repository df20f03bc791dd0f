//! `osbuild-controller ungate`: removes our scheduling gate (and nothing else) from pods, so that removing
//! the controller never leaves pods gated (docs/install.md, "Uninstall").

use k8s_openapi::api::admissionregistration::v1::MutatingAdmissionPolicyBinding;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use super::decide::{has_gate, release_patch};
use crate::cli::UngateArgs;

/// Releases the pods `args` names; returns one line per pod released. A pod that is not gated is
/// reported, not an error; a pod that cannot be read or patched is.
pub async fn ungate_command(args: &UngateArgs) -> anyhow::Result<String> {
    let client = crate::run::client(&args.cluster).await?;
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    if let Some(binding) = &args.stop_gating {
        lines.push(stop_gating(&client, binding).await?);
    }
    let targets: Vec<(String, String)> = if args.all {
        let api: Api<Pod> = match &args.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        api.list(&ListParams::default())
            .await
            .map_err(|e| anyhow::anyhow!("cannot list pods: {e}"))?
            .into_iter()
            .filter(has_gate)
            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
            .collect()
    } else {
        let ns = args
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        args.pods.iter().map(|p| (ns.clone(), p.clone())).collect()
    };
    for (namespace, name) in targets {
        match ungate(&client, &namespace, &name).await {
            Ok(true) => lines.push(format!("{namespace}/{name}: gate removed")),
            Ok(false) => lines.push(format!("{namespace}/{name}: not gated")),
            Err(err) => failed.push(format!("{namespace}/{name}: {err}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{}",
            lines
                .into_iter()
                .chain(failed)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if lines.len() == usize::from(args.stop_gating.is_some()) {
        lines.push("no gated pod".to_owned());
    }
    Ok(lines.join("\n"))
}

/// Deletes the policy binding that gates new pods; an error (other than its absence) stops the command, as
/// releasing pods while new ones are still gated would leave those gated.
async fn stop_gating(client: &Client, binding: &str) -> anyhow::Result<String> {
    let api: Api<MutatingAdmissionPolicyBinding> = Api::all(client.clone());
    match api.delete(binding, &DeleteParams::default()).await {
        Ok(_) => Ok(format!(
            "mutatingadmissionpolicybinding/{binding}: deleted, no new pod is gated"
        )),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(format!(
            "mutatingadmissionpolicybinding/{binding}: already gone"
        )),
        Err(err) => Err(anyhow::anyhow!(
            "cannot delete mutatingadmissionpolicybinding/{binding} (no pod was released): {err}"
        )),
    }
}

/// Whether the gate was there and is now removed; retries when the pod changed under us.
async fn ungate(client: &Client, namespace: &str, name: &str) -> Result<bool, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut attempts = 0;
    loop {
        let pod = api.get(name).await?;
        if !has_gate(&pod) {
            return Ok(false);
        }
        // The key is unused without values: no affinity is added.
        let patch = release_patch(&pod, "", None);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => attempts += 1,
            Err(err) => return Err(err),
        }
    }
}
