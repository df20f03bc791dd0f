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

/// Each successful Lease write of a replica (its renewals and its acquisition) as a term of one instant:
/// the API server accepted it, so the replica held the Lease then. The checker's Lease watch misses the
/// versions written while it is down (a kube-apiserver kill; a re-list shows only the latest), so the
/// terms taken from it can end early; these, on the API server's own record, fill such gaps. A paused
/// leader that wakes up cannot add one: its renewal is refused (409) once another replica holds the Lease.
pub fn lease_holds(requests: &[Request]) -> Vec<(String, Timestamp, Timestamp)> {
    requests
        .iter()
        .filter(|r| {
            r.access.1 == "leases"
                && ["create", "update", "patch"].contains(&r.access.2.as_str())
                && (200..300).contains(&r.code)
        })
        .map(|r| (r.replica.clone(), r.received, r.received))
        .collect()
}

pub struct Judgement {
    pub violations: Vec<Violation>,
    pub writes_by_replica: BTreeMap<String, usize>,
    pub used_by_replica: BTreeMap<String, BTreeSet<Access>>,
    pub unused: BTreeSet<Access>,
    pub requests: usize,
}

/// Every leader write falls inside a term of its replica (as the checker saw the Lease, or an instant the
/// API server accepted its Lease write: [`lease_holds`]), extended by the renew deadline; every access
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
    let holds = lease_holds(requests);
    for r in requests {
        used_by_replica
            .entry(r.replica.clone())
            .or_default()
            .insert(r.access.clone());
        if !is_leader_write(&r.access) {
            continue;
        }
        *writes_by_replica.entry(r.replica.clone()).or_default() += 1;
        let inside = terms
            .iter()
            .chain(&holds)
            .any(|(replica, acquired, renewed)| {
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
            let last_hold = holds
                .iter()
                .filter(|(replica, t, _)| *replica == r.replica && *t <= r.received)
                .map(|(_, t, _)| t.to_string())
                .next_back()
                .unwrap_or_else(|| "none".into());
            violations.push(violation(Invariant::WriteOutsideTerm, format!(
                "replica {} wrote ({:?} {} {}, HTTP {}) at {} outside its terms as leader [{nearest}] (+{renew_deadline:?}); its last Lease write the API server accepted before: {last_hold}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn request(replica: &str, resource: &str, verb: &str, code: i64, received: &str) -> Request {
        Request {
            replica: replica.into(),
            access: (String::new(), resource.into(), verb.into()),
            name: "x".into(),
            code,
            received: at(received),
        }
    }

    fn granted_all() -> BTreeSet<Access> {
        [("", "nodes", "patch"), ("", "leases", "update")]
            .iter()
            .map(|(g, r, v)| ((*g).into(), (*r).into(), (*v).into()))
            .collect()
    }

    // The checker's Lease watch saw a's term up to 10:00:10 only (it was down meanwhile); the API server
    // accepted a's renewal at 10:00:20, so a's write at 10:00:23 was inside a term as leader.
    #[test]
    fn a_renewal_the_checker_missed_but_the_audit_log_holds_extends_the_term() {
        let seen = vec![(
            "a".to_owned(),
            at("2026-12-01T10:00:00Z"),
            at("2026-12-01T10:00:10Z"),
        )];
        let deadline = std::time::Duration::from_secs(5);
        let write = request("a", "nodes", "patch", 200, "2026-12-01T10:00:23Z");
        // positive control: from the watch alone the write is outside
        let alone = judge(
            std::slice::from_ref(&write),
            &seen,
            deadline,
            &granted_all(),
        );
        assert_eq!(alone.violations.len(), 1);
        assert_eq!(
            alone.violations[0].kind,
            crate::verdict::Invariant::WriteOutsideTerm
        );
        let renewal = request("a", "leases", "update", 200, "2026-12-01T10:00:20Z");
        let requests = vec![renewal, write.clone()];
        let judged = judge(&requests, &seen, deadline, &granted_all());
        assert!(judged.violations.is_empty(), "{:?}", judged.violations);
        // a renewal the API server refused (another replica holds the Lease) proves nothing
        let refused = vec![
            request("a", "leases", "update", 409, "2026-12-01T10:00:20Z"),
            write,
        ];
        let judged = judge(&refused, &seen, deadline, &granted_all());
        assert_eq!(judged.violations.len(), 1, "{:?}", judged.violations);
    }
}
