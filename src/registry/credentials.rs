//! Registry credentials from image pull secrets, matched to an image the way the kubelet's credential
//! keyring does (kubernetes `pkg/credentialprovider/keyring.go`): keys are registry hosts (with optional
//! port and path), `*` globs one host label, the port must be equal, the key's path must prefix the
//! image's; the most specific key comes first; Docker Hub's key `https://index.docker.io/v1/` serves
//! images named `docker.io/...`, `index.docker.io/...` or without a registry host. Pure: no I/O.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

/// One username/password pair for a registry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Which key of a pull secret holds the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// `kubernetes.io/dockerconfigjson`, key `.dockerconfigjson`: `{"auths": {KEY: ENTRY}}`.
    DockerConfigJson,
    /// `kubernetes.io/dockercfg` (legacy), key `.dockercfg`: `{KEY: ENTRY}`.
    DockerCfg,
}

/// Why a pull secret could not be read; the secret is skipped, the others still count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("not a docker config: {0}")]
    Json(String),
    #[error("registry {key:?}: `auth` is not base64 of \"user:password\"")]
    BadAuth { key: String },
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// The (registry key, credential) pairs of one pull secret's data. `auth` (base64 `user:password`) wins
/// over `username`/`password`, as in the kubelet; entries with neither are left out.
pub fn parse_pull_secret(
    format: SecretFormat,
    data: &[u8],
) -> Result<Vec<(String, Credential)>, CredentialError> {
    let entries: BTreeMap<String, Entry> = match format {
        SecretFormat::DockerConfigJson => {
            serde_json::from_slice::<ConfigJson>(data)
                .map_err(|e| CredentialError::Json(e.to_string()))?
                .auths
        }
        SecretFormat::DockerCfg => {
            serde_json::from_slice(data).map_err(|e| CredentialError::Json(e.to_string()))?
        }
    };
    let mut out = Vec::new();
    for (key, entry) in entries {
        let credential = match entry.auth.as_deref().filter(|a| !a.is_empty()) {
            Some(auth) => {
                decode_auth(auth).ok_or_else(|| CredentialError::BadAuth { key: key.clone() })?
            }
            None => match (entry.username, entry.password) {
                (Some(username), Some(password)) if !username.is_empty() => {
                    Credential { username, password }
                }
                _ => continue,
            },
        };
        out.push((key, credential));
    }
    Ok(out)
}

fn decode_auth(auth: &str) -> Option<Credential> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credential {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// Credentials from every pull secret of a pod (its own, then its ServiceAccount's), by registry key.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<(String, Credential)>,
}

impl Keyring {
    pub fn new(entries: impl IntoIterator<Item = (String, Credential)>) -> Self {
        let mut entries: Vec<(String, Credential)> = entries
            .into_iter()
            .filter_map(|(key, cred)| Some((normalize_key(&key)?, cred)))
            .collect();
        // Reverse order of keys, so "registry/team" is tried before "registry" (the kubelet's order);
        // the sort is stable, so one key's credentials keep the order they were given in.
        entries.sort_by(|a, b| b.0.cmp(&a.0));
        entries.dedup();
        Self { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credentials to try for an image reference (`host[:port]/path[:tag|@digest]`), in order; empty
    /// means anonymous.
    pub fn lookup(&self, image: &str) -> Vec<Credential> {
        let name = image_name(image);
        let mut found: Vec<Credential> = self
            .entries
            .iter()
            .filter(|(key, _)| key_matches(key, &name))
            .map(|(_, cred)| cred.clone())
            .collect();
        if found.is_empty() && is_docker_hub(&name) {
            found = self
                .entries
                .iter()
                .filter(|(key, _)| key == "index.docker.io")
                .map(|(_, cred)| cred.clone())
                .collect();
        }
        found.dedup();
        found
    }
}

/// "https://index.docker.io/v1/" → "index.docker.io"; "http://reg:5000/team/" → "reg:5000/team/".
fn normalize_key(key: &str) -> Option<String> {
    let key = key.trim();
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    // /v1/ and /v2/ mean the registry itself.
    let path = path
        .strip_prefix("/v1")
        .or_else(|| path.strip_prefix("/v2"))
        .filter(|p| p.is_empty() || p.starts_with('/'))
        .unwrap_or(path);
    Some(match path {
        "" | "/" => host.to_ascii_lowercase(),
        p => format!("{}{p}", host.to_ascii_lowercase()),
    })
}

/// The image without tag or digest; the host is lower-cased.
fn image_name(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or_default();
    let (head, last) = match no_digest.rfind('/') {
        Some(i) => no_digest.split_at(i + 1),
        None => ("", no_digest),
    };
    let last = last.split(':').next().unwrap_or_default();
    let name = format!("{head}{last}");
    match name.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", host.to_ascii_lowercase()),
        None => name,
    }
}

fn split_host(url: &str) -> (&str, &str) {
    match url.find('/') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    }
}

fn host_port(host: &str) -> (&str, &str) {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (host, ""),
    }
}

fn key_matches(key: &str, image: &str) -> bool {
    let (key_host, key_path) = split_host(key);
    let (image_host, image_path) = split_host(image);
    let ((key_host, key_port), (image_host, image_port)) =
        (host_port(key_host), host_port(image_host));
    if key_port != image_port || !image_path.starts_with(key_path) {
        return false;
    }
    let (key_labels, image_labels): (Vec<&str>, Vec<&str>) = (
        key_host.split('.').collect(),
        image_host.split('.').collect(),
    );
    key_labels.len() == image_labels.len()
        && key_labels
            .iter()
            .zip(&image_labels)
            .all(|(k, i)| glob_label(k, i))
}

/// One host label against a glob label: `*` matches any run of characters, the rest literally.
fn glob_label(glob: &str, label: &str) -> bool {
    match glob.split_once('*') {
        None => glob == label,
        Some((prefix, rest)) => {
            let Some(tail) = label.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_label(rest, &tail[i..]))
        }
    }
}

/// Docker's rule: the first path part names a registry only if it has a `.` or `:` (or is localhost).
fn is_docker_hub(image: &str) -> bool {
    match image.split_once('/') {
        None => !image.is_empty(),
        Some((first, _)) => {
            first == "docker.io"
                || first == "index.docker.io"
                || !(first.contains('.') || first.contains(':') || first == "localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(u: &str, p: &str) -> Credential {
        Credential {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn dockerconfigjson_auth_and_username_password() {
        // The shape `kubectl create secret docker-registry` writes (Kubernetes docs, "Pull an Image from a
        // Private Registry"): auths → {username, password, auth}.
        let data = br#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p","auth":"dTpw"},
            "reg.example.com:5000":{"username":"alice","password":"s3cr:et"},
            "empty.example.com":{}}}"#;
        let parsed = parse_pull_secret(SecretFormat::DockerConfigJson, data).unwrap();
        assert_eq!(
            parsed,
            vec![
                ("https://index.docker.io/v1/".into(), cred("u", "p")),
                ("reg.example.com:5000".into(), cred("alice", "s3cr:et")),
            ]
        );
        // auth wins over username/password, and a password may contain ':'.
        let data = br#"{"auths":{"r.io":{"username":"x","password":"y","auth":"Ym9iOnB3OjE="}}}"#;
        assert_eq!(
            parse_pull_secret(SecretFormat::DockerConfigJson, data).unwrap()[0].1,
            cred("bob", "pw:1")
        );
    }

    #[test]
    fn legacy_dockercfg() {
        let data = br#"{"quay.io":{"auth":"dTpw","email":"a@b.c"}}"#;
        assert_eq!(
            parse_pull_secret(SecretFormat::DockerCfg, data).unwrap(),
            vec![("quay.io".into(), cred("u", "p"))]
        );
    }

    #[test]
    fn bad_secrets_say_why() {
        assert!(matches!(
            parse_pull_secret(SecretFormat::DockerConfigJson, b"{not json"),
            Err(CredentialError::Json(_))
        ));
        let err = parse_pull_secret(
            SecretFormat::DockerConfigJson,
            br#"{"auths":{"r.io":{"auth":"!!!"}}}"#,
        )
        .unwrap_err();
        assert_eq!(err, CredentialError::BadAuth { key: "r.io".into() });
        // base64 without a colon is not user:password either.
        assert!(
            parse_pull_secret(
                SecretFormat::DockerCfg,
                br#"{"r.io":{"auth":"bm9jb2xvbg=="}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn keyring_matches_like_the_kubelet() {
        let ring = Keyring::new([
            ("https://index.docker.io/v1/".into(), cred("hub", "1")),
            ("reg.example.com".into(), cred("host", "2")),
            ("reg.example.com/team".into(), cred("team", "3")),
            ("*.azurecr.io".into(), cred("acr", "4")),
            ("127.0.0.1:5000".into(), cred("local", "5")),
            ("http://plain.example.com/v2/".into(), cred("plain", "6")),
        ]);
        let users = |image: &str| -> Vec<String> {
            ring.lookup(image).into_iter().map(|c| c.username).collect()
        };
        assert_eq!(users("reg.example.com/team/app:1"), ["team", "host"]);
        assert_eq!(users("reg.example.com/other/app"), ["host"]);
        assert_eq!(users("REG.example.com/other/app"), ["host"]);
        assert_eq!(users("reg.example.com:443/other/app"), Vec::<String>::new());
        assert_eq!(users("myreg.azurecr.io/app@sha256:00"), ["acr"]);
        assert_eq!(users("a.b.azurecr.io/app"), Vec::<String>::new());
        assert_eq!(users("127.0.0.1:5000/windows/ltsc2022"), ["local"]);
        assert_eq!(
            users("127.0.0.1:5001/windows/ltsc2022"),
            Vec::<String>::new()
        );
        assert_eq!(users("plain.example.com/x"), ["plain"]);
        // Docker Hub under all its names.
        assert_eq!(users("nginx"), ["hub"]);
        assert_eq!(users("library/nginx:1.27"), ["hub"]);
        assert_eq!(users("docker.io/library/nginx"), ["hub"]);
        assert_eq!(users("index.docker.io/library/nginx"), ["hub"]);
        assert_eq!(users("localhost/app"), Vec::<String>::new());
        assert_eq!(users("quay.io/app"), Vec::<String>::new());
        assert!(Keyring::default().lookup("nginx").is_empty());
    }

    #[test]
    fn debug_hides_the_password() {
        assert!(!format!("{:?}", cred("u", "hunter2")).contains("hunter2"));
    }
}
