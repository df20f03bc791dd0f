//! The API server's audit log as a witness: who wrote what when, and which (verb, resource) each replica
//! used, compared with the Lease terms the checker saw and with what manifests/ grants.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::verdict::{Invariant, Violation, violation};

/// (apiGroup, resource[/subresource], verb); the core group is "".
pub type Access = (String, String, String);

/// One request of a replica, from its ResponseComplete record.
#[derive(Debug, Clone)]
pub struct Request {
    pub replica: String,
    pub access: Access,
    pub name: String,
    pub code: i64,
    pub received: Timestamp,
}

/// The requests of the soak's ServiceAccounts (`system:serviceaccount:<namespace>:soak-<replica>`).
pub fn read(path: &Path, namespace: &str) -> Vec<Request> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the audit log {}: {e}", path.display()));
    let user_prefix = format!("system:serviceaccount:{namespace}:soak-");
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|r| r["stage"] == "ResponseComplete" || r["stage"] == "Panic")
        .filter_map(|r| {
            let replica = r["user"]["username"]
                .as_str()?
                .strip_prefix(&user_prefix)?
                .to_owned();
            let object = r.get("objectRef")?;
            let mut resource = object["resource"].as_str()?.to_owned();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let group = object["apiGroup"].as_str().unwrap_or_default().to_owned();
            Some(Request {
                replica,
                access: (group, resource, r["verb"].as_str()?.to_owned()),
                name: object["name"].as_str().unwrap_or_default().to_owned(),
                code: r["responseStatus"]["code"].as_i64().unwrap_or(0),
                received: r["requestReceivedTimestamp"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

/// What a ClusterRole or Role (YAML) grants, as a set of accesses.
pub fn granted(yaml: &str) -> BTreeSet<Access> {
    let role: Value = serde_norway::from_str(yaml).expect("RBAC YAML");
    let mut set = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for group in rule["apiGroups"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    set.insert((
                        group.as_str().unwrap_or_default().to_owned(),
                        resource.as_str().unwrap_or_default().to_owned(),
                        verb.as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
    }
    set
}

/// A write that leadership governs: labels, annotations and Events (the Lease itself is how leadership
/// is won, so its writes are not judged here).
pub fn is_leader_write(access: &Access) -> bool {
    let writes = ["create", "update", "patch", "delete"];
    access.1 != "leases" && writes.contains(&access.2.as_str())
}

pub struct Judgement {
    pub violations: Vec<Violation>,
    pub writes_by_replica: BTreeMap<String, usize>,
    pub used_by_replica: BTreeMap<String, BTreeSet<Access>>,
    pub unused: BTreeSet<Access>,
    pub requests: usize,
}

/// Every leader write falls inside a term of its replica, extended by the renew deadline; every access
/// used is granted, and (over all replicas) every access granted is used.
pub fn judge(
    requests: &[Request],
    terms: &[(String, Timestamp, Timestamp)],
    renew_deadline: std::time::Duration,
    granted: &BTreeSet<Access>,
) -> Judgement {
    let deadline = SignedDuration::try_from(renew_deadline).unwrap_or_default();
    let mut violations = Vec::new();
    let mut writes_by_replica: BTreeMap<String, usize> = BTreeMap::new();
    let mut used_by_replica: BTreeMap<String, BTreeSet<Access>> = BTreeMap::new();
    for r in requests {
        used_by_replica
            .entry(r.replica.clone())
            .or_default()
            .insert(r.access.clone());
        if !is_leader_write(&r.access) {
            continue;
        }
        *writes_by_replica.entry(r.replica.clone()).or_default() += 1;
        let inside = terms.iter().any(|(replica, acquired, renewed)| {
            *replica == r.replica
                && r.received >= *acquired
                && r.received <= renewed.saturating_add(deadline).unwrap_or(*renewed)
        });
        if !inside {
            let nearest = terms
                .iter()
                .filter(|(replica, ..)| *replica == r.replica)
                .map(|(_, a, e)| format!("{a}..{e}"))
                .collect::<Vec<_>>()
                .join(", ");
            violations.push(violation(Invariant::WriteOutsideTerm, format!(
                "replica {} wrote ({:?} {} {}, HTTP {}) at {} outside its terms as leader [{nearest}] (+{renew_deadline:?})",
                r.replica, r.access.2, r.access.1, r.name, r.code, r.received
            )));
        }
    }
    let mut all_used = BTreeSet::new();
    for (replica, used) in &used_by_replica {
        for access in used.difference(granted) {
            violations.push(violation(
                Invariant::AccessNotGranted,
                format!("replica {replica} used {access:?}, which manifests/ does not grant"),
            ));
        }
        all_used.extend(used.iter().cloned());
    }
    let unused = granted.difference(&all_used).cloned().collect();
    Judgement {
        violations,
        writes_by_replica,
        used_by_replica,
        unused,
        requests: requests.len(),
    }
}
