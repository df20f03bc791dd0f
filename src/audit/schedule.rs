//! Which nodes a pod template can land on, as kube-scheduler's filters would decide from the template
//! alone: `nodeName`, `nodeSelector`, required node affinity, taints (NoSchedule and NoExecute) against
//! tolerations, and the RuntimeClass's scheduling (its nodeSelector and tolerations join the pod's, as the
//! RuntimeClass admission plugin does). Resources, ports and pod (anti-)affinity are left out: they say
//! whether a node is full now, not whether it can run the image at all. Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};
use k8s_openapi::api::node::v1::Scheduling;

/// Whether the template can be scheduled onto `node`.
pub fn can_land(spec: &PodSpec, runtime_class: Option<&Scheduling>, node: &Node) -> bool {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return false;
    }
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selectors = spec
        .node_selector
        .iter()
        .chain(runtime_class.and_then(|s| s.node_selector.as_ref()))
        .flatten();
    for (key, value) in selectors {
        if labels.get(key) != Some(value) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required
        && !required
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, labels, name))
    {
        return false;
    }
    let tolerations: Vec<&Toleration> = spec
        .tolerations
        .iter()
        .chain(runtime_class.and_then(|s| s.tolerations.as_ref()))
        .flatten()
        .collect();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// A term matches when all its expressions (on labels) and fields (only `metadata.name` exists) match. An
/// empty term matches nothing, as in kube-scheduler.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(name);
            requirement_matches(r, value)
        })
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |text: &str| text.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|w| w != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|b| number(b)),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        // An operator the API server would have refused: match nothing rather than everything.
        _ => false,
    }
}

/// kube-scheduler's toleration rule: same effect (or any), and the key matches with `Exists`, or key and
/// value match with `Equal` (the default). An empty key with `Exists` tolerates every taint.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(clippy::needless_pass_by_value)] // called with json! literals
    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    fn spec(value: serde_json::Value) -> PodSpec {
        let mut value = value;
        value["containers"] = json!([{"name": "app", "image": "x"}]);
        serde_json::from_value(value).unwrap()
    }

    fn ws2019() -> Node {
        node(
            "ws2019",
            json!({"kubernetes.io/os": "windows", "agentpool": "win19", "beta.kubernetes.io/osbuild": "17763"}),
            json!([]),
        )
    }

    fn tainted_ws2022() -> Node {
        node(
            "ws2022",
            json!({"kubernetes.io/os": "windows", "agentpool": "win22", "beta.kubernetes.io/osbuild": "20348"}),
            json!([{"key": "os", "value": "windows", "effect": "NoSchedule"}]),
        )
    }

    #[test]
    fn node_selector_and_node_name() {
        let s = spec(json!({"nodeSelector": {"kubernetes.io/os": "windows"}}));
        assert!(can_land(&s, None, &ws2019()));
        let s = spec(json!({"nodeSelector": {"agentpool": "win22"}}));
        assert!(!can_land(&s, None, &ws2019()));
        let s = spec(json!({"nodeName": "elsewhere"}));
        assert!(!can_land(&s, None, &ws2019()));
        assert!(can_land(
            &spec(json!({"nodeName": "ws2019"})),
            None,
            &ws2019()
        ));
    }

    #[test]
    fn required_node_affinity_terms_are_ored_and_expressions_anded() {
        let s = spec(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]},
                    {"key": "beta.kubernetes.io/osbuild", "operator": "In", "values": ["20348", "26100"]}
                ]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ws2019"]}]}
            ]}}}}),
        );
        assert!(can_land(&s, None, &ws2019()), "the second term names it");
        let only_first = spec(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "beta.kubernetes.io/osbuild", "operator": "In", "values": ["20348"]}
            ]}]}}}}),
        );
        assert!(!can_land(&only_first, None, &ws2019()));
        let ops = |op: &str, values: serde_json::Value| {
            spec(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "beta.kubernetes.io/osbuild", "operator": op, "values": values}
                ]}]}}}}),
            )
        };
        assert!(can_land(&ops("Gt", json!(["17000"])), None, &ws2019()));
        assert!(!can_land(&ops("Lt", json!(["17000"])), None, &ws2019()));
        assert!(can_land(&ops("NotIn", json!(["20348"])), None, &ws2019()));
        assert!(can_land(&ops("Exists", json!(null)), None, &ws2019()));
        assert!(!can_land(
            &ops("DoesNotExist", json!(null)),
            None,
            &ws2019()
        ));
        assert!(!can_land(&ops("Sideways", json!(["x"])), None, &ws2019()));
    }

    #[test]
    fn taints_need_tolerations_and_runtime_classes_add_theirs() {
        let plain = spec(json!({}));
        assert!(!can_land(&plain, None, &tainted_ws2022()));
        let tolerant = spec(
            json!({"tolerations": [{"key": "os", "operator": "Equal", "value": "windows", "effect": "NoSchedule"}]}),
        );
        assert!(can_land(&tolerant, None, &tainted_ws2022()));
        let wrong_value = spec(json!({"tolerations": [{"key": "os", "value": "linux"}]}));
        assert!(!can_land(&wrong_value, None, &tainted_ws2022()));
        let everything = spec(json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(can_land(&everything, None, &tainted_ws2022()));
        // A PreferNoSchedule taint never keeps a pod off.
        let soft = node(
            "soft",
            json!({}),
            json!([{"key": "k", "effect": "PreferNoSchedule"}]),
        );
        assert!(can_land(&plain, None, &soft));

        // The RuntimeClass of the Windows docs: its nodeSelector and toleration join the pod's.
        let scheduling: Scheduling = serde_json::from_value(json!({
            "nodeSelector": {"kubernetes.io/os": "windows", "agentpool": "win22"},
            "tolerations": [{"key": "os", "operator": "Equal", "value": "windows", "effect": "NoSchedule"}]
        }))
        .unwrap();
        assert!(can_land(&plain, Some(&scheduling), &tainted_ws2022()));
        assert!(!can_land(&plain, Some(&scheduling), &ws2019()));
    }
}
