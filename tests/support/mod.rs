//! The integration tests' harness is the workspace's test kit (testkit/); this module only brings it in
//! under the name every test file uses (`mod support;`).
#![allow(unused_imports)] // each test binary uses a different part of the kit

pub use osbuild_testkit::*;
