//! Which labels a field manager owns on an object, read from `metadata.managedFields`.
//!
//! Server-side apply records, per manager, the fields it set. We compare our own entry with what we want,
//! so a node whose labels already hold gets no write, and a label we no longer want is dropped by applying
//! without it.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

/// The label keys `manager` owns through server-side apply (operation `Apply`).
pub fn applied_label_keys(
    managed_fields: &[ManagedFieldsEntry],
    manager: &str,
) -> BTreeSet<String> {
    managed_fields
        .iter()
        .filter(|e| {
            e.manager.as_deref() == Some(manager) && e.operation.as_deref() == Some("Apply")
        })
        .filter_map(|e| e.fields_v1.as_ref())
        .filter_map(|f| f.0.get("f:metadata")?.get("f:labels")?.as_object())
        .flat_map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("f:"))
                .map(str::to_owned)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn reads_only_our_apply_entry() {
        let fields = vec![
            entry(
                "osbuild-controller",
                "Apply",
                serde_json::json!({"f:metadata": {"f:labels": {"f:beta.kubernetes.io/osbuild": {}, "f:osbuild-controller.io/build": {}}}}),
            ),
            entry(
                "kubectl-label",
                "Update",
                serde_json::json!({"f:metadata": {"f:labels": {"f:team": {}}}}),
            ),
            entry(
                "osbuild-controller",
                "Update",
                serde_json::json!({"f:metadata": {"f:labels": {"f:stale": {}}}}),
            ),
            entry("kubelet", "Update", serde_json::json!({"f:status": {}})),
        ];
        let keys = applied_label_keys(&fields, "osbuild-controller");
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            ["beta.kubernetes.io/osbuild", "osbuild-controller.io/build"]
        );
    }

    #[test]
    fn no_entry_no_keys() {
        assert!(applied_label_keys(&[], "osbuild-controller").is_empty());
        let odd = [entry(
            "osbuild-controller",
            "Apply",
            serde_json::json!({"f:metadata": {"f:labels": 5}}),
        )];
        assert!(applied_label_keys(&odd, "osbuild-controller").is_empty());
    }
}
