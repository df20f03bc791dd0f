//! Reading the JSON a registry returns: an OCI image index or Docker manifest list, an image manifest
//! (OCI or Docker schema 2), and an image config. Only the fields placement needs are read; anything
//! else unreadable is a bad manifest. Pure: bytes in, data out.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What we ask the registry for, in order of preference.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// BuildKit marks provenance/SBOM manifests in an index with this annotation; they are not images.
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// A manifest as far as placement cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Index(Vec<IndexEntry>),
    Image { config_digest: String },
}

/// One entry of an index, attestations included (see [`IndexEntry::is_attestation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub digest: String,
    pub media_type: Option<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub os_version: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

impl IndexEntry {
    pub fn is_attestation(&self) -> bool {
        self.annotations.contains_key(REFERENCE_TYPE)
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: Option<String>,
    architecture: Option<String>,
    #[serde(rename = "os.version")]
    os_version: Option<String>,
}

/// Parses a manifest body; the error says what is wrong with it.
pub fn parse_manifest(body: &[u8]) -> Result<Manifest, String> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if raw.schema_version != Some(2) {
        return Err(format!(
            "unsupported schemaVersion {} (only 2 has platforms)",
            raw.schema_version
                .map_or_else(|| "missing".to_owned(), |v| v.to_string())
        ));
    }
    let is_index = match raw.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("unsupported manifest mediaType {other:?}")),
        // OCI allows leaving mediaType out: the fields say which it is.
        None => raw.manifests.is_some(),
    };
    if is_index {
        let entries = raw
            .manifests
            .ok_or("index has no \"manifests\"")?
            .into_iter()
            .map(|d| {
                let platform = d.platform;
                IndexEntry {
                    digest: d.digest,
                    media_type: d.media_type,
                    os: platform.as_ref().and_then(|p| p.os.clone()),
                    architecture: platform.as_ref().and_then(|p| p.architecture.clone()),
                    os_version: platform
                        .and_then(|p| p.os_version)
                        .filter(|v| !v.trim().is_empty()),
                    annotations: d.annotations.unwrap_or_default(),
                }
            })
            .collect();
        return Ok(Manifest::Index(entries));
    }
    let config = raw.config.ok_or("image manifest has no \"config\"")?;
    if config.digest.is_empty() {
        return Err("image manifest's config has no digest".to_owned());
    }
    Ok(Manifest::Image {
        config_digest: config.digest,
    })
}

/// The platform an image config names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConfigPlatform {
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(rename = "os.version", default)]
    pub os_version: Option<String>,
}

/// Parses an image config (OCI or Docker): `os`, `architecture`, `os.version`.
pub fn parse_config(body: &[u8]) -> Result<ConfigPlatform, String> {
    let mut config: ConfigPlatform = serde_json::from_slice(body)
        .map_err(|e| format!("image config is not valid JSON with an \"os\": {e}"))?;
    config.os_version = config.os_version.filter(|v| !v.trim().is_empty());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shape of `docker manifest inspect golang` (docker-library/golang#393): a Docker manifest list whose
    // Windows entries carry os.version.
    const DOCKER_LIST_JSON: &str = r#"{"schemaVersion":2,
      "mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
      "manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":3401,
        "digest":"sha256:c4ce5aceda7d0acd768feb657728003bb1716256244e258de67d11dbf3e7e134",
        "platform":{"architecture":"amd64","os":"windows","os.version":"10.0.20348.230"}},
       {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,
        "digest":"sha256:00","platform":{"architecture":"amd64","os":"linux"}}]}"#;

    // containerd/containerd#12818: an OCI index with a Windows image and BuildKit's attestation entry
    // (unknown/unknown, annotated vnd.docker.reference.type: attestation-manifest).
    const ATTESTED_JSON: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
      "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":670,
        "digest":"sha256:c3f2e09bfaa662c6a80ad5fd2657f24da718d4b158c015de2b68f6d77eedd51d",
        "platform":{"architecture":"amd64","os":"windows","os.version":"10.0.20348.4405"}},
       {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":566,
        "digest":"sha256:f22e2f8315ff8c7e41b5fd658dd3769ac44729d8668a0b4fee65e3471d7be263",
        "platform":{"architecture":"unknown","os":"unknown"},
        "annotations":{"vnd.docker.reference.digest":"sha256:c3f2","vnd.docker.reference.type":"attestation-manifest"}}]}"#;

    #[test]
    fn docker_manifest_list() {
        let Manifest::Index(entries) = parse_manifest(DOCKER_LIST_JSON.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].os.as_deref(), Some("windows"));
        assert_eq!(entries[0].os_version.as_deref(), Some("10.0.20348.230"));
        assert_eq!(entries[1].os_version, None);
        assert!(!entries[0].is_attestation());
    }

    #[test]
    fn attestation_entries_are_marked() {
        let Manifest::Index(entries) = parse_manifest(ATTESTED_JSON.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert!(!entries[0].is_attestation());
        assert!(entries[1].is_attestation());
    }

    #[test]
    fn image_manifest_and_config() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
          "config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":276,"digest":"sha256:6d12"},
          "layers":[]}"#;
        assert_eq!(
            parse_manifest(m).unwrap(),
            Manifest::Image {
                config_digest: "sha256:6d12".into()
            }
        );
        // What `crane config` shows for an image made with --set-platform windows/amd64:10.0.20348.2655.
        let c = br#"{"architecture":"amd64","created":"0001-01-01T00:00:00Z","os":"windows",
          "rootfs":{"type":"layers","diff_ids":[]},"config":{},"os.version":"10.0.20348.2655"}"#;
        let p = parse_config(c).unwrap();
        assert_eq!(
            (
                p.os.as_str(),
                p.architecture.as_str(),
                p.os_version.as_deref()
            ),
            ("windows", "amd64", Some("10.0.20348.2655"))
        );
        let p = parse_config(br#"{"os":"linux","architecture":"arm64","os.version":""}"#).unwrap();
        assert_eq!(p.os_version, None);
    }

    #[test]
    fn malformed_manifests_say_what_is_wrong() {
        let cut = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":"#;
        assert!(parse_manifest(cut).unwrap_err().contains("not valid JSON"));
        assert!(parse_manifest(b"<html>502</html>").is_err());
        assert!(
            parse_manifest(br#"{"schemaVersion":1,"name":"x"}"#)
                .unwrap_err()
                .contains("schemaVersion 1")
        );
        assert!(
            parse_manifest(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#)
                .unwrap_err()
                .contains("text/plain")
        );
        assert!(parse_manifest(br#"{"schemaVersion":2}"#).is_err());
        assert!(parse_config(br#"{"architecture":"amd64"}"#).is_err());
    }
}
