//! The audit: which Windows workloads will crash, and which will crash after an upgrade (issue 13). These
//! are its pure parts: which nodes a pod template can land on ([`schedule`]), the verdict from those nodes
//! and the images' platforms ([`verdict`]), and upgrade assumptions ([`what_if`]). The `audit` command and
//! the in-cluster loop ([`in_cluster`], `run --audit-interval`) read the cluster and the registries and call them.

pub mod command;
pub mod in_cluster;
pub mod schedule;
pub mod verdict;
pub mod what_if;
