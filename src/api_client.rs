//! The Kubernetes client: kube's own middleware (base URI, authentication, extra headers) over a connection
//! that speaks HTTP/2 when the API server offers it, as client-go does.
//!
//! Why: kube-client 5 speaks HTTP/1.1 only (kube-rs/kube#1923), and an HTTP/1.1 connection carries one
//! request at a time: a leader placing 32 pods and writing 16 nodes at once held ~43 connections to the API
//! server (a follower 6), each with its TLS and HTTP buffers. Over HTTP/2 every request and watch is a
//! stream of one connection (the soak counts 1 per follower; docs/reliability.md, "HTTP/2 to the API
//! server"). kube's own caveat, that exec, attach and port-forward need an HTTP/1.1 upgrade, does not
//! apply: the controller uses none.
//!
//! A dead connection is found by HTTP/2 pings (client-go's health check: a ping after 30 s without a
//! frame, the connection given up 15 s later), so a half-open connection cannot hold every watch at once;
//! they stand in for kube's read and write timeouts, which would apply to the one connection as a whole.
//! Through a proxy (`proxy-url` in the kubeconfig) the client is kube's own, unchanged.

use std::time::Duration;

use anyhow::Context;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::{Client, Config};
use tower::ServiceBuilder;

/// What the API server may send ahead on one stream before we read it (hyper's default: 2 MiB), and on the
/// whole connection (5 MiB). Data sent ahead waits in our memory, not the kernel's: with hyper's windows a
/// relist of 10,000 pods, decoded slower than the server sends it, left each process 1.4 MiB larger for good
/// (the soak, docs/reliability.md). 256 KiB is below HTTP/1.1's own read buffer (up to 400 KiB) and still
/// 25 MB/s per stream at 10 ms round trip.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// A ping after this long without a frame from the API server (client-go's `ReadIdleTimeout`).
const PING_WHEN_IDLE: Duration = Duration::from_secs(30);
/// The connection is given up when a ping is not answered in this time (client-go's `PingTimeout`).
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for `config`: HTTP/2 when the API server offers it (ALPN), else HTTP/1.1.
pub fn build(config: Config) -> anyhow::Result<Client> {
    if config.proxy_url.is_some() {
        return Client::try_from(config).context("cannot build a Kubernetes client");
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let tls = config
        .rustls_client_config()
        .context("cannot set up TLS for the Kubernetes API")?;
    let mut https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls_pki_types::ServerName::try_from(name.clone())
            .with_context(|| format!("tls-server-name {name:?} is not a valid server name"))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let connector = https.enable_http1().enable_http2().wrap_connector(http);
    let connection = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(PING_WHEN_IDLE)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .auth_layer()
                .context("cannot set up authentication to the Kubernetes API")?,
        )
        .layer(
            config
                .extra_headers_layer()
                .context("cannot set up the kubeconfig's extra headers")?,
        )
        // Either side of the authentication layer must fail with the same error type.
        .map_err(tower::BoxError::from)
        .service(connection);
    Ok(Client::new(service, config.default_namespace))
}
