//! The pure core: Windows version parsing, the label rule, compatibility and the OS-mismatch classifier.
//!
//! No I/O, no kube types, no async. The CLI's offline commands are answered from here alone, and the
//! controllers only call it.

pub mod catalog;
pub mod compat;
pub mod image;
pub mod labels;
pub mod mismatch;
pub mod platform;
pub mod runs_on;
pub mod version;
