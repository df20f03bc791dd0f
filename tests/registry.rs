//! Against real registries (scripts/registry: distribution's registry with TLS + htpasswd, and crane's
//! plain-HTTP registry), with images pushed by crane (tests/registry/fixtures.sh): every image shape
//! through the library and the CLI, credentials, failures, and the cache. The registries are built and
//! started on first use; if they cannot be, every test here fails with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use osbuild_controller::core::platform::{ImageKind, VersionSource};
use osbuild_controller::core::runs_on::{Isolation, runs_on};
use osbuild_controller::registry::credentials::Credential;
use osbuild_controller::registry::{ErrorKind, Freshness, Registry, RegistryOptions, upkeep};
use serde_json::Value;
use support::{Registries, registries};
use tokio_util::sync::CancellationToken;

/// The kit's registries, with the accessors these tests use.
trait Env {
    fn credential(&self) -> Credential;
}

impl Env for Registries {
    fn credential(&self) -> Credential {
        Credential {
            username: self.get("REGISTRY_USER").into(),
            password: self.get("REGISTRY_PASSWORD").into(),
        }
    }
}

fn env() -> &'static Registries {
    registries()
}

fn plain_registry(timeout: Duration) -> Registry {
    Registry::new(RegistryOptions {
        insecure: vec![env().plain_host().to_owned()],
        timeout,
        ..RegistryOptions::default()
    })
    .expect("registry client")
}

fn secure_registry() -> Registry {
    Registry::new(RegistryOptions {
        ca_file: Some(env().get("REGISTRY_CA").into()),
        ..RegistryOptions::default()
    })
    .expect("registry client")
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(std::string::ToString::to_string).collect()
}

const LTSC2022_HOSTS: &[&str] = &["20348", "22000", "22621", "22631", "25398", "26100"];

#[tokio::test]
async fn every_image_shape_resolves_to_its_platforms_and_hosts() {
    let registry = plain_registry(Duration::from_secs(10));
    let with_2019: Vec<&str> = std::iter::once("17763")
        .chain(LTSC2022_HOSTS.iter().copied())
        .collect();
    let single: Vec<&str> = LTSC2022_HOSTS
        .iter()
        .copied()
        .chain(std::iter::once("26200"))
        .collect();
    // (repository, kind, [(os, os.version, source, any host)], process-isolation hosts)
    type Row<'a> = (
        &'a str,
        ImageKind,
        Vec<(&'a str, Option<&'a str>, VersionSource, bool)>,
        Vec<&'a str>,
    );
    let w = |v: &'static str| ("windows", Some(v), VersionSource::Index, false);
    let cases: Vec<Row> = vec![
        (
            "windows/ltsc2019",
            ImageKind::Index,
            vec![w("10.0.17763.6293")],
            vec!["17763"],
        ),
        (
            "windows/ltsc2022",
            ImageKind::Index,
            vec![w("10.0.20348.2655")],
            LTSC2022_HOSTS.to_vec(),
        ),
        (
            "windows/ltsc2025",
            ImageKind::Index,
            vec![w("10.0.26100.1742")],
            vec!["26100", "26200"],
        ),
        (
            "windows/multi",
            ImageKind::Index,
            vec![w("10.0.17763.6293"), w("10.0.20348.2655")],
            with_2019.clone(),
        ),
        (
            "windows/dockerlist",
            ImageKind::Index,
            vec![w("10.0.17763.6293"), w("10.0.20348.2655")],
            with_2019.clone(),
        ),
        (
            "windows/single",
            ImageKind::Manifest,
            vec![(
                "windows",
                Some("10.0.20348.2655"),
                VersionSource::Config,
                false,
            )],
            single,
        ),
        (
            "windows/noversion",
            ImageKind::Index,
            vec![
                w("10.0.20348.2655"),
                (
                    "windows",
                    Some("10.0.17763.6293"),
                    VersionSource::Config,
                    true,
                ),
            ],
            with_2019,
        ),
        (
            "windows/attested",
            ImageKind::Index,
            vec![w("10.0.20348.2655")],
            LTSC2022_HOSTS.to_vec(),
        ),
        (
            "windows/ws2016",
            ImageKind::Index,
            vec![w("10.0.14393.1715")],
            vec!["14393.1715"],
        ),
        (
            "linux/app",
            ImageKind::Index,
            vec![("linux", None, VersionSource::Unknown, false)],
            vec![],
        ),
    ];
    for (repo, kind, platforms, hosts) in cases {
        let image = format!("{}/{repo}", env().plain_host());
        let resolved = registry
            .resolve(&image, &[], Freshness::Cached)
            .await
            .unwrap_or_else(|e| panic!("{image}: {e}"));
        assert_eq!(resolved.platforms.kind, kind, "{repo}");
        let got: Vec<_> = resolved
            .platforms
            .platforms
            .iter()
            .map(|p| {
                (
                    p.os.as_str(),
                    p.os_version.as_deref(),
                    p.version_source,
                    p.matches_any_host,
                )
            })
            .collect();
        assert_eq!(got, platforms, "{repo}");
        assert!(resolved.digest.starts_with("sha256:"), "{repo}");
        let answer = runs_on(&resolved.platforms, Isolation::Process);
        assert_eq!(answer.values, strs(&hosts), "{repo}");
        assert_eq!(answer.windows, repo != "linux/app", "{repo}");
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(args)
        .env_remove("OSBUILD_REGISTRY_INSECURE")
        .env_remove("OSBUILD_REGISTRY_CA_FILE")
        .env_remove("OSBUILD_DOCKER_CONFIG")
        .output()
        .expect("the binary runs")
}

fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn cli_image_json_and_errors() {
    let plain = env().plain_host();
    let out = cli(&[
        "image",
        "-o",
        "json",
        "--registry-insecure",
        plain,
        &format!("{plain}/windows/multi"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let platforms = v["platforms"].as_array().expect("platforms");
    assert_eq!(platforms.len(), 2);
    assert_eq!(platforms[0]["os"], "windows");
    assert_eq!(platforms[0]["architecture"], "amd64");
    assert_eq!(platforms[0]["os_version"], "10.0.17763.6293");
    assert_eq!(platforms[0]["build"], 17763);
    assert_eq!(platforms[1]["build"], 20348);
    assert_eq!(v["runs_on"][0], "17763");
    assert_eq!(v["runs_on"].as_array().map(Vec::len), Some(7));

    let text = cli(&[
        "image",
        "--registry-insecure",
        plain,
        &format!("{plain}/windows/ltsc2022"),
    ]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(
            "runs on osbuild: 20348, 22000, 22621, 22631, 25398, 26100 (process isolation)"
        )
    );

    let err = one_error_line(&cli(&[
        "image",
        "--registry-insecure",
        plain,
        &format!("{plain}/broken/manifest"),
    ]));
    assert!(err.contains("bad-manifest"), "{err}");
    let err = one_error_line(&cli(&[
        "image",
        "--registry-insecure",
        plain,
        &format!("{plain}/windows/nothing:here"),
    ]));
    assert!(err.contains("not-found"), "{err}");
    let err = one_error_line(&cli(&[
        "image",
        "--registry-ca-file",
        env().get("REGISTRY_CA"),
        &format!("{}/private/ltsc2019", env().secure_host()),
    ]));
    assert!(err.contains("unauthorized"), "{err}");
    let err = one_error_line(&cli(&["image", "not a reference!"]));
    assert!(err.contains("bad-reference"), "{err}");

    // compat --image REF: a WS2025 host runs the ltsc2022 index, a 25H2 host pulls nothing from it.
    let image = format!("{plain}/windows/ltsc2022");
    for (host, process) in [("26100", true), ("26200", false), ("17763", false)] {
        let out = cli(&[
            "compat",
            "-o",
            "json",
            "--host",
            host,
            "--image",
            &image,
            "--registry-insecure",
            plain,
        ]);
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["process_isolation"], process, "host {host}: {v}");
    }
}

/// Registries are trusted through the system's trust store, which `SSL_CERT_FILE` names as for OpenSSL
/// (rustls-platform-verifier reads it), and through `--registry-ca-file`.
#[test]
fn cli_trusts_the_system_store() {
    let image = format!("{}/private/ltsc2019", env().secure_host());
    let image_with_ssl_cert_file = |file: &str| {
        Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
            .args(["image", &image])
            .env_remove("OSBUILD_REGISTRY_CA_FILE")
            .env_remove("OSBUILD_DOCKER_CONFIG")
            .env("SSL_CERT_FILE", file)
            .output()
            .expect("the binary runs")
    };
    // The test CA as the system's store: TLS holds, and the registry's own answer comes back (no credential).
    let err = one_error_line(&image_with_ssl_cert_file(env().get("REGISTRY_CA")));
    assert!(err.contains("unauthorized"), "{err}");
    // Positive control: a store without the test CA (Debian's, as the image ships) fails at TLS.
    let err = one_error_line(&image_with_ssl_cert_file(
        "/etc/ssl/certs/ca-certificates.crt",
    ));
    assert!(err.contains("unreachable"), "{err}");
}

#[tokio::test]
async fn private_image_needs_the_right_credentials() {
    let registry = secure_registry();
    let image = format!("{}/private/ltsc2019", env().secure_host());
    let resolved = registry
        .resolve(&image, &[env().credential()], Freshness::Cached)
        .await
        .expect("the right credentials read the private image");
    assert_eq!(
        resolved.platforms.platforms[0].os_version.as_deref(),
        Some("10.0.17763.6293")
    );
    let wrong = Credential {
        username: env().get("REGISTRY_USER").into(),
        password: "wrong".into(),
    };
    let err = registry
        .resolve(&image, std::slice::from_ref(&wrong), Freshness::Cached)
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
    assert_eq!(err.category(), "unauthorized");
    let err = registry
        .resolve(&image, &[], Freshness::Cached)
        .await
        .expect_err("anonymous");
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
    // Like the kubelet: a refused credential, then the right one.
    registry
        .resolve(&image, &[wrong, env().credential()], Freshness::Cached)
        .await
        .expect("the second credential is tried");
    // Without the test CA, TLS fails.
    let no_ca = Registry::new(RegistryOptions::default()).expect("client");
    let err = no_ca
        .resolve(&image, &[env().credential()], Freshness::Cached)
        .await
        .expect_err("unknown CA");
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");
}

#[tokio::test]
async fn registry_down_slow_and_malformed() {
    // Positive control: the plain registry answers.
    let registry = plain_registry(Duration::from_secs(2));
    registry
        .resolve(
            &format!("{}/windows/ltsc2022", env().plain_host()),
            &[],
            Freshness::Cached,
        )
        .await
        .expect("the plain registry answers");

    // Down: a port nobody listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = format!("127.0.0.1:{port}");
    let r = Registry::new(RegistryOptions {
        insecure: vec![down.clone()],
        timeout: Duration::from_secs(2),
        ..RegistryOptions::default()
    })
    .expect("client");
    let err = r
        .resolve(&format!("{down}/windows/ltsc2022"), &[], Freshness::Cached)
        .await
        .expect_err("nobody listens");
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");

    // Slow: accepts the connection and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let slow = listener.local_addr().expect("addr").to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let r = Registry::new(RegistryOptions {
        insecure: vec![slow.clone()],
        timeout: Duration::from_secs(1),
        ..RegistryOptions::default()
    })
    .expect("client");
    let err = r
        .resolve(&format!("{slow}/windows/ltsc2022"), &[], Freshness::Cached)
        .await
        .expect_err("never answers");
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    silent.abort();

    // Malformed: the registry serves JSON cut short.
    let err = registry
        .resolve(
            &format!("{}/broken/manifest", env().plain_host()),
            &[],
            Freshness::Cached,
        )
        .await
        .expect_err("malformed");
    assert_eq!(err.kind, ErrorKind::BadManifest, "{err}");
    assert!(err.detail.contains("not valid JSON"), "{err}");
}

/// Manifest GETs for `repo` in crane's access log ("GET /v2/REPO/manifests/...").
fn manifest_gets(repo: &str) -> usize {
    let log = std::fs::read_to_string(format!("{}/plain.log", env().get("REGISTRY_LOGS")))
        .expect("the plain registry's log");
    let needle = format!("GET /v2/{repo}/manifests/");
    log.lines().filter(|l| l.contains(&needle)).count()
}

#[tokio::test]
async fn one_registry_resolution_per_image_and_credential_within_the_ttl() {
    let registry = plain_registry(Duration::from_secs(10));
    let image = format!("{}/windows/cached", env().plain_host());
    let before = manifest_gets("windows/cached");
    // 20 pods at once, then 20 more: one resolution.
    let all = futures::future::join_all(
        (0..20).map(|_| registry.resolve(&image, &[], Freshness::Cached)),
    )
    .await;
    assert!(all.iter().all(Result::is_ok));
    for _ in 0..20 {
        registry
            .resolve(&image, &[], Freshness::Cached)
            .await
            .expect("cached");
    }
    let stats = registry.stats();
    assert_eq!(stats.resolutions, 1, "{stats:?}");
    assert_eq!(stats.cache_hits, 39, "{stats:?}");
    // The registry saw exactly one manifest GET for it (positive control: it saw that one).
    assert_eq!(manifest_gets("windows/cached") - before, 1);

    // Another credential is another key; the same digest by reference hits the cache.
    let other = Credential {
        username: "someone".into(),
        password: "else".into(),
    };
    let first = registry
        .resolve(&image, &[other], Freshness::Cached)
        .await
        .expect("anonymous registry ignores credentials");
    assert_eq!(registry.stats().resolutions, 2);
    let by_digest = format!("{}/windows/cached@{}", env().plain_host(), first.digest);
    registry
        .resolve(&by_digest, &[], Freshness::Cached)
        .await
        .expect("by digest");
    assert_eq!(registry.stats().resolutions, 2);

    // imagePullPolicy: Always refreshes.
    registry
        .resolve(&image, &[], Freshness::Refresh)
        .await
        .expect("refresh");
    assert_eq!(registry.stats().resolutions, 3);
    assert_eq!(manifest_gets("windows/cached") - before, 3);

    // A TTL of zero never serves from the cache.
    let uncached = Registry::new(RegistryOptions {
        insecure: vec![env().plain_host().to_owned()],
        cache_ttl: Duration::ZERO,
        ..RegistryOptions::default()
    })
    .expect("client");
    for _ in 0..2 {
        uncached
            .resolve(&image, &[], Freshness::Cached)
            .await
            .expect("resolves");
    }
    assert_eq!(uncached.stats().resolutions, 2);
}

/// What the registry reader holds (answers, clients with their connections) is dropped once expired, and
/// all of it when the replica stops leading: a replica that led must not keep the leader's registry state
/// as a follower (found by the long soak: a step in memory after the first term).
#[tokio::test]
async fn a_replica_that_stops_leading_drops_what_the_registry_held() {
    let image = format!("{}/windows/cached", env().plain_host());
    let registry = Arc::new(plain_registry(Duration::from_secs(10)));
    registry
        .resolve(&image, &[], Freshness::Cached)
        .await
        .expect("resolves");
    let held = |r: &Registry| (r.stats().cache_entries, r.stats().clients);
    // By reference and by digest, one anonymous client.
    assert_eq!(held(&registry), (2, 1));
    // Positive control: a sweep keeps what has not expired.
    registry.drop_expired();
    assert_eq!(held(&registry), (2, 1));

    let (leadership, changes) = tokio::sync::watch::channel(false);
    let stop = CancellationToken::new();
    let upkeep = tokio::spawn(upkeep(registry.clone(), changes, stop.clone()));
    leadership.send(true).expect("upkeep listens");
    registry
        .resolve(&image, &[], Freshness::Refresh)
        .await
        .expect("resolves as leader");
    assert_eq!(held(&registry), (2, 1), "becoming the leader drops nothing");
    leadership.send(false).expect("upkeep listens");
    let dropped = async {
        while held(&registry) != (0, 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the registry's answers and clients dropped when leadership ended");
    stop.cancel();
    upkeep
        .await
        .expect("joins")
        .expect("ends cleanly on shutdown");

    // Expired answers go at a sweep, without waiting for a full cache.
    let expiring = Registry::new(RegistryOptions {
        insecure: vec![env().plain_host().to_owned()],
        cache_ttl: Duration::ZERO,
        ..RegistryOptions::default()
    })
    .expect("client");
    expiring
        .resolve(&image, &[], Freshness::Cached)
        .await
        .expect("resolves");
    assert_eq!(held(&expiring), (2, 1));
    expiring.drop_expired();
    assert_eq!(held(&expiring), (0, 0));
}
