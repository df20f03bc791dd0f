//! Reads an image's platforms from its registry (DOMAIN.md §3 "Images"): an OCI image index or Docker
//! manifest list gives each entry's `platform."os.version"`; a single manifest, or an index entry without
//! it, gives its image config's `os.version`; attestation entries are skipped. What runs where is then
//! [`crate::core::runs_on`]'s decision.
//!
//! The HTTP side (Basic and Bearer token auth, digests) is oci-client's, on the same rustls + ring stack
//! as kube. oci-client's own platform resolver ignores `os.version`, so we fetch the raw manifests and read
//! them here ([`manifest`]). Answers are cached ([`cache`]); concurrent requests for one key wait for one
//! registry resolution.

pub mod cache;
pub mod clients;
mod collector;
pub mod credentials;
pub mod error;
pub mod manifest;
pub mod reference;
mod upkeep;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;

use crate::core::platform::{ImageKind, ImagePlatforms, Platform, VersionSource};
use cache::{Cache, CacheKey, credential_hash};
use clients::Clients;
pub use collector::RegistryCollector;
use credentials::Credential;
pub use error::{ErrorKind, RegistryError};
use manifest::{ACCEPTED, Manifest, parse_config, parse_manifest};
pub use upkeep::upkeep;

/// How the controller and the CLI talk to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// PEM file of extra CAs to trust (beside the system's), e.g. a private registry's CA.
    pub ca_file: Option<PathBuf>,
    /// Registries (`host[:port]`, as in the image reference) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Limit for one resolution, every request of it included.
    pub timeout: Duration,
    /// How long an answer is reused.
    pub cache_ttl: Duration,
    /// At most this many answers are kept.
    pub cache_capacity: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            insecure: Vec::new(),
            timeout: Duration::from_secs(10),
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 1024,
        }
    }
}

/// An image and its platforms, as read from its registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedImage {
    /// The reference as given.
    pub image: String,
    /// The canonical reference (`registry/repository:tag` or `...@digest`).
    pub reference: String,
    /// Digest of the manifest or index the reference names.
    pub digest: String,
    #[serde(flatten)]
    pub platforms: ImagePlatforms,
}

/// Use a cached answer, or ask the registry again (`imagePullPolicy: Always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Cached,
    Refresh,
}

/// Counters and sizes for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// Resolutions that went to a registry (cache misses and refreshes), successful or not.
    pub resolutions: u64,
    /// Manifest and blob requests sent (the auth handshake is not counted).
    pub requests: u64,
    /// Answers served from the cache.
    pub cache_hits: u64,
    /// Answers held now (by reference and credential, and by digest).
    pub cache_entries: usize,
    /// HTTP clients held now, one per credential in use.
    pub clients: usize,
}

/// HTTP clients kept at most (one per credential in use: [`clients`]).
const CLIENTS: usize = 16;

/// Reads images from registries; share one per process.
pub struct Registry {
    options: RegistryOptions,
    roots: Vec<Vec<u8>>,
    cache: Mutex<Cache<Arc<ResolvedImage>>>,
    clients: Mutex<Clients<Client>>,
    in_flight: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
    resolutions: AtomicU64,
    requests: AtomicU64,
    cache_hits: AtomicU64,
    request_duration: Option<prometheus::Histogram>,
}

impl Registry {
    /// Also records each manifest and blob request's duration in `histogram`.
    #[must_use]
    pub fn observe_requests(mut self, histogram: prometheus::Histogram) -> Self {
        self.request_duration = Some(histogram);
        self
    }

    fn timed(&self) -> Option<prometheus::HistogramTimer> {
        self.request_duration
            .as_ref()
            .map(prometheus::Histogram::start_timer)
    }

    /// Fails only on our own configuration (an unreadable or empty CA file).
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        // One TLS stack with kube: rustls with ring. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = match &options.ca_file {
            None => Vec::new(),
            Some(path) => read_ca_file(path)?,
        };
        Ok(Self {
            cache: Mutex::new(Cache::new(options.cache_ttl, options.cache_capacity)),
            clients: Mutex::new(Clients::new(options.cache_ttl, CLIENTS)),
            options,
            roots,
            in_flight: Mutex::new(HashMap::new()),
            resolutions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            request_duration: None,
        })
    }

    /// Drops the answers past their TTL and the clients idle as long (each with its connections and its
    /// parsed trust store): without it they stay until the cache is full.
    pub fn drop_expired(&self) {
        let now = Instant::now();
        lock(&self.cache).drop_expired(now);
        lock(&self.clients).drop_idle(now);
    }

    /// Drops every answer and every client: a replica that stops leading no longer places pods, and reads
    /// afresh if it leads again.
    pub fn forget(&self) {
        lock(&self.cache).clear();
        lock(&self.clients).clear();
    }

    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            resolutions: self.resolutions.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_entries: lock(&self.cache).len(),
            clients: lock(&self.clients).len(),
        }
    }

    /// The platforms of `image`, trying each credential in order (anonymous when there are none), as the
    /// kubelet does: the first that is not refused answers.
    pub async fn resolve(
        &self,
        image: &str,
        credentials: &[Credential],
        freshness: Freshness,
    ) -> Result<Arc<ResolvedImage>, RegistryError> {
        let reference = reference::parse(image.trim())
            .map_err(|e| RegistryError::new(ErrorKind::BadReference, image, e))?;
        let key = CacheKey::for_reference(&reference.whole(), credentials);
        if freshness == Freshness::Cached
            && let Some(hit) = self.cached(&key)
        {
            return Ok(hit);
        }
        // One resolution per key at a time: the others wait, then find it cached.
        let gate = {
            let mut in_flight = lock(&self.in_flight);
            in_flight.entry(key.clone()).or_default().clone()
        };
        let guard = gate.lock().await;
        let result = match (freshness, self.cached(&key)) {
            (Freshness::Cached, Some(hit)) => Ok(hit),
            _ => self.resolve_now(image, &reference, credentials, &key).await,
        };
        drop(guard);
        let mut in_flight = lock(&self.in_flight);
        if Arc::strong_count(&gate) <= 2 {
            in_flight.remove(&key);
        }
        result
    }

    fn cached(&self, key: &CacheKey) -> Option<Arc<ResolvedImage>> {
        let cache = lock(&self.cache);
        let hit = cache.get(key, Instant::now());
        if hit.is_some() {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    async fn resolve_now(
        &self,
        image: &str,
        reference: &Reference,
        credentials: &[Credential],
        key: &CacheKey,
    ) -> Result<Arc<ResolvedImage>, RegistryError> {
        self.resolutions.fetch_add(1, Ordering::Relaxed);
        let tries: Vec<Option<&Credential>> = if credentials.is_empty() {
            vec![None]
        } else {
            credentials.iter().map(Some).collect()
        };
        let attempt = async {
            let mut last = None;
            for credential in tries {
                match self.fetch(image, reference, credential).await {
                    Ok(found) => return Ok(found),
                    Err(e) if e.kind == ErrorKind::Unauthorized => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                RegistryError::new(ErrorKind::Unauthorized, image, "no credential")
            }))
        };
        let found = tokio::time::timeout(self.options.timeout, attempt)
            .await
            .map_err(|_| {
                RegistryError::new(
                    ErrorKind::Timeout,
                    image,
                    format!("no answer within {:?}", self.options.timeout),
                )
            })??;
        let found = Arc::new(found);
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        let by_digest = format!(
            "{}/{}@{}",
            reference.resolve_registry(),
            reference.repository(),
            found.digest
        );
        cache.insert(CacheKey::Digest(by_digest), found.clone(), now);
        cache.insert(key.clone(), found.clone(), now);
        Ok(found)
    }

    /// The client for `credential`: reused while it is in use ([`clients`]).
    fn client(
        &self,
        image: &str,
        credential: Option<&Credential>,
    ) -> Result<Client, RegistryError> {
        let key = credential_hash(credential.map(std::slice::from_ref).unwrap_or_default());
        lock(&self.clients).get_or_build(key, Instant::now(), || self.new_client(image))
    }

    fn new_client(&self, image: &str) -> Result<Client, RegistryError> {
        let config = ClientConfig {
            protocol: if self.options.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(self.options.insecure.clone())
            },
            extra_root_certificates: self
                .roots
                .iter()
                .map(|der| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            connect_timeout: Some(self.options.timeout),
            read_timeout: Some(self.options.timeout),
            platform_resolver: None,
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| RegistryError::from_oci(image, &e))
    }

    /// One resolution with one credential (anonymous when `None`), on that credential's own client, so
    /// tokens never cross credentials.
    async fn fetch(
        &self,
        image: &str,
        reference: &Reference,
        credential: Option<&Credential>,
    ) -> Result<ResolvedImage, RegistryError> {
        let auth = &match credential {
            None => RegistryAuth::Anonymous,
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        };
        let client = self.client(image, credential)?;
        let (body, digest) = self.manifest(&client, image, reference, auth).await?;
        let bad = |detail: String| RegistryError::new(ErrorKind::BadManifest, image, detail);
        let platforms = match parse_manifest(&body).map_err(bad)? {
            Manifest::Image { config_digest } => {
                let config = self
                    .config(&client, image, reference, &config_digest)
                    .await?;
                ImagePlatforms {
                    kind: ImageKind::Manifest,
                    platforms: vec![Platform {
                        os: config.os,
                        architecture: config.architecture,
                        version_source: if config.os_version.is_some() {
                            VersionSource::Config
                        } else {
                            VersionSource::Unknown
                        },
                        os_version: config.os_version,
                        matches_any_host: false,
                        digest: Some(digest.clone()),
                    }],
                }
            }
            Manifest::Index(entries) => {
                let mut platforms = Vec::new();
                for entry in entries.into_iter().filter(|e| !e.is_attestation()) {
                    platforms.push(
                        self.entry_platform(&client, image, reference, auth, entry)
                            .await?,
                    );
                }
                ImagePlatforms {
                    kind: ImageKind::Index,
                    platforms,
                }
            }
        };
        Ok(ResolvedImage {
            image: image.to_owned(),
            reference: reference.whole(),
            digest,
            platforms,
        })
    }

    /// An index entry's platform; a Windows (or unlabelled) entry without `os.version` is read through
    /// its own manifest's config.
    async fn entry_platform(
        &self,
        client: &Client,
        image: &str,
        reference: &Reference,
        auth: &RegistryAuth,
        entry: manifest::IndexEntry,
    ) -> Result<Platform, RegistryError> {
        let declared_windows = entry
            .os
            .as_deref()
            .is_none_or(|os| os.eq_ignore_ascii_case("windows"));
        let mut platform = Platform {
            os: entry.os.clone().unwrap_or_else(|| "unknown".to_owned()),
            architecture: entry
                .architecture
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
            os_version: entry.os_version.clone(),
            version_source: VersionSource::Index,
            matches_any_host: false,
            digest: Some(entry.digest.clone()),
        };
        if entry.os_version.is_some() || !declared_windows {
            if entry.os_version.is_none() {
                platform.version_source = VersionSource::Unknown;
            }
            return Ok(platform);
        }
        platform.matches_any_host = true;
        let child = reference.clone_with_digest(entry.digest.clone());
        let (body, _) = self.manifest(client, image, &child, auth).await?;
        let bad = |detail: String| {
            RegistryError::new(
                ErrorKind::BadManifest,
                image,
                format!("index entry {}: {detail}", entry.digest),
            )
        };
        let Manifest::Image { config_digest } = parse_manifest(&body).map_err(bad)? else {
            return Err(bad("an index inside an index is not an image".to_owned()));
        };
        let config = self.config(client, image, &child, &config_digest).await?;
        platform.os = config.os;
        if !config.architecture.is_empty() {
            platform.architecture = config.architecture;
        }
        platform.version_source = if config.os_version.is_some() {
            VersionSource::Config
        } else {
            VersionSource::Unknown
        };
        platform.os_version = config.os_version;
        // Only a Windows entry is matched by os.version; anything else is not "any host".
        platform.matches_any_host = platform.is_windows();
        Ok(platform)
    }

    async fn manifest(
        &self,
        client: &Client,
        image: &str,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(bytes::Bytes, String), RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let _timer = self.timed();
        client
            .pull_manifest_raw(reference, auth, ACCEPTED)
            .await
            .map_err(|e| RegistryError::from_oci(image, &e))
    }

    async fn config(
        &self,
        client: &Client,
        image: &str,
        reference: &Reference,
        digest: &str,
    ) -> Result<manifest::ConfigPlatform, RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut body = Vec::new();
        let timer = self.timed();
        // The credentials were stored on the client by the manifest request.
        client
            .pull_blob(reference, digest, &mut body)
            .await
            .map_err(|e| RegistryError::from_oci(image, &e))?;
        drop(timer);
        parse_config(&body).map_err(|detail| {
            RegistryError::new(
                ErrorKind::BadManifest,
                image,
                format!("config {digest}: {detail}"),
            )
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_ca_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, RegistryError> {
    let what = path.display().to_string();
    let config = |detail: String| RegistryError::new(ErrorKind::Config, &what, detail);
    let pem = std::fs::read(path).map_err(|e| config(format!("cannot read the CA file: {e}")))?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| config(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(config("no PEM certificate in the CA file".to_owned()));
    }
    Ok(certs)
}
