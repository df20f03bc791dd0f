//! The controller's Kubernetes client (`api_client`) against the real API server: watches and many requests
//! at once share one HTTP/2 connection, where kube's default client opens one HTTP/1.1 connection per
//! request in flight (a leader held ~43 of them in the soak: docs/reliability.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::net::SocketAddr;

use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{ListParams, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use osbuild_controller::api_client;
use support::faults::Proxy;

/// Requests in flight at once, as a leader has them (16 node writes and 32 placements).
const AT_ONCE: usize = 48;

async fn admin_config() -> Config {
    let kubeconfig = Kubeconfig::read_from(support::kubeconfig()).unwrap();
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap()
}

/// The admin config with its server replaced by a proxy to it (the serving certificate names 127.0.0.1).
async fn config_via_proxy() -> (Config, Proxy) {
    let mut config = admin_config().await;
    let upstream: SocketAddr = config
        .cluster_url
        .authority()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    config.cluster_url = format!("https://127.0.0.1:{}", proxy.port).parse().unwrap();
    (config, proxy)
}

/// Three watches kept open while AT_ONCE reads run together, as the controller has them.
async fn work_like_a_leader(client: &Client) {
    let params = WatchParams::default().timeout(30);
    let _nodes = Api::<Node>::all(client.clone())
        .watch(&params, "0")
        .await
        .unwrap();
    let _pods = Api::<Pod>::all(client.clone())
        .watch(&params, "0")
        .await
        .unwrap();
    let mut namespace_watch = Api::<Namespace>::all(client.clone())
        .watch(&params, "0")
        .await
        .unwrap()
        .boxed();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let one = ListParams::default().limit(1);
    let reads = (0..AT_ONCE).map(|_| namespaces.list(&one));
    let results = future::join_all(reads).await;
    assert!(results.iter().all(Result::is_ok), "every read succeeds");
    // The watches are still open: their first events arrive (every namespace is sent as Added).
    assert!(namespace_watch.try_next().await.unwrap().is_some());
}

#[tokio::test]
async fn watches_and_requests_in_flight_share_one_connection() {
    let (config, proxy) = config_via_proxy().await;
    let client = api_client::build(config).unwrap();
    // The API server answers over HTTP/2.
    let response = client
        .send(
            http::Request::get("/version")
                .body(Vec::new().into())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);

    work_like_a_leader(&client).await;
    assert_eq!(proxy.accepted(), 1, "one connection for everything");

    // Positive control: the same work with kube's default client (HTTP/1.1) through a proxy of its own
    // opens a connection for each watch and for many of the reads, so the count above is not blind.
    let (config, http1_proxy) = config_via_proxy().await;
    let http1 = Client::try_from(config).unwrap();
    work_like_a_leader(&http1).await;
    assert!(
        http1_proxy.accepted() > 3,
        "kube's default client opened only {} connections",
        http1_proxy.accepted()
    );
}
