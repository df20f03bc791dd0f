//! osbuild-controller: labels Windows nodes by OS build and flags pods failing with the Windows container
//! OS-version mismatch. The binary's subcommands are thin wrappers around this library.

/// Our field manager for server-side apply, and the controller name on Events.
pub const FIELD_MANAGER: &str = "osbuild-controller";

pub mod api_client;
pub mod audit;
pub mod cli;
pub mod core;
pub mod events;
pub mod health;
pub mod image_command;
pub mod index;
pub mod index_writer;
pub mod indexed_node;
pub mod leadership;
pub mod lease;
pub mod metrics;
pub mod node_info;
pub mod nodes;
pub mod offline;
pub mod ownership;
pub mod placement;
pub mod pods;
pub mod pull_secrets;
pub mod registry;
pub mod run;
pub mod server;
pub mod shared;
pub mod signals;
pub mod supervisor;
pub mod telemetry;
pub mod watches;
