//! osbuild-controller: labels Windows nodes by OS build and flags pods failing with the Windows container
//! OS-version mismatch. The binary's subcommands are thin wrappers around this library.

pub mod cli;
pub mod core;
pub mod offline;
