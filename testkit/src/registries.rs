//! The test registries (`scripts/registry`: distribution's registry with TLS + htpasswd, and crane's plain
//! one, both built from Go modules) with every image shape pushed (`tests/registry/fixtures.sh`), started
//! once per test process. If they cannot be had, the test fails with why: never a skip.

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

use crate::cluster::repo_root;

/// What `scripts/registry up` printed: `REGISTRY_PLAIN`, `REGISTRY_SECURE`, `REGISTRY_CA`,
/// `REGISTRY_USER`, `REGISTRY_PASSWORD`, ...
pub struct Registries(HashMap<String, String>);

impl Registries {
    pub fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("scripts/registry printed no {key}"))
    }

    /// `host:port` of the plain-HTTP, anonymous registry.
    pub fn plain_host(&self) -> &str {
        self.get("REGISTRY_PLAIN")
    }

    /// `host:port` of the TLS registry with htpasswd.
    pub fn secure_host(&self) -> &str {
        self.get("REGISTRY_SECURE")
    }

    /// An image reference on the plain registry, e.g. `plain("windows/ltsc2022")`.
    pub fn plain(&self, path: &str) -> String {
        format!("{}/{path}", self.plain_host())
    }

    pub fn secure(&self, path: &str) -> String {
        format!("{}/{path}", self.secure_host())
    }

    pub fn vars(&self) -> &HashMap<String, String> {
        &self.0
    }
}

/// Starts (or reuses) the registries in `target/registry-test` and pushes the fixtures, once per process.
pub fn registries() -> &'static Registries {
    static REGISTRIES: OnceLock<Registries> = OnceLock::new();
    REGISTRIES.get_or_init(|| {
        let root = repo_root();
        let up = Command::new(root.join("scripts/registry"))
            .arg("up")
            .env("OSBUILD_REGISTRY_DIR", root.join("target/registry-test"))
            .output()
            .expect("scripts/registry runs");
        assert!(
            up.status.success(),
            "the test registries did not start: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let vars: HashMap<String, String> = String::from_utf8_lossy(&up.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for target in ["plain", "secure"] {
            let pushed = Command::new(root.join("tests/registry/fixtures.sh"))
                .arg(target)
                .envs(&vars)
                .output()
                .expect("fixtures.sh runs");
            assert!(
                pushed.status.success(),
                "pushing the {target} fixtures failed: {}",
                String::from_utf8_lossy(&pushed.stderr)
            );
        }
        Registries(vars)
    })
}
