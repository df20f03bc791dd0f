//! Watch plumbing every loop shares: how a watch gets its initial state (streamed, or paged lists where the
//! server refuses to stream), the list page size, and feeding watch events into readiness and the watch
//! metrics (with a probe that notices a silently resumed watch).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::events::watch_error_category;
use crate::health::Health;
use crate::metrics::Metrics;

/// Objects per page of a watch's initial list. Each page is held whole while it is decoded; measured at
/// 1,000 nodes and 10,000 pods, pages of 100 instead of kube's 500 cut the peak RSS by 40% and list no
/// slower (docs/benchmarks.md).
pub const LIST_PAGE_SIZE: u32 = 100;

/// How a watch gets the initial state of its objects (`--initial-list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InitialList {
    /// One watch with `sendInitialEvents=true` (kube-apiserver's WatchList, on by default since 1.34): the
    /// server streams every object, then a bookmark; no list request, no page held whole. Where the server
    /// refuses (the feature turned off, or a server too old), falls back to `paged` for the process's life.
    #[default]
    Streaming,
    /// Lists in pages of [`LIST_PAGE_SIZE`], then a watch from the list's resourceVersion.
    Paged,
}

/// A watcher that gets its initial state as `strategy` says: streamed, falling back to paged lists when the
/// server refuses the streaming watch. The refusal is logged once and never reaches readiness or the error
/// metrics: it is not an outage. Other errors pass through, retried as [`WatchBackoff`] says.
pub fn initial_state_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    strategy: InitialList,
    name: &'static str,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let backoff = WatchBackoff::default();
    let expired = backoff.expired.clone();
    unbacked_watcher(api, config, strategy, name)
        .inspect(move |event| {
            if let Err(err) = event
                && watch_error_category(err) == "expired"
            {
                expired.store(true, Ordering::Relaxed);
            }
        })
        .backoff(backoff)
}

/// How a failed watch is retried: kube-runtime's default (0.8 s doubling to 30 s with jitter, reset by the
/// next event; client-go's reflector waits the same), except after a watch expired (410 Gone). The server
/// answered that one, so it is reachable, and the watch can only go on by listing again: it re-lists at
/// once. Without this, a watch that expires right after an outage waits out the delay the outage built up
/// (up to 30 s more) before it re-lists, not ready all that time (found by the soak: a replica not ready
/// 38 s after its connection came back). A second expiry in a row backs off as usual, so a server that
/// answers 410 to every list is not hammered.
#[derive(Default)]
pub struct WatchBackoff {
    inner: watcher::DefaultBackoff,
    /// Set by the stream when the error it is about to back off from is an expiry.
    expired: Arc<AtomicBool>,
    /// The previous retry was an immediate re-list after an expiry, with no event since.
    relisted_at_once: bool,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let expired = self.expired.swap(false, Ordering::Relaxed);
        if expired && !self.relisted_at_once {
            self.relisted_at_once = true;
            self.inner.reset();
            return Some(Duration::ZERO);
        }
        self.inner.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.inner.reset();
        self.relisted_at_once = false;
    }
}

fn unbacked_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    strategy: InitialList,
    name: &'static str,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let paged = config.clone().page_size(LIST_PAGE_SIZE);
    if strategy == InitialList::Paged {
        return watcher(api, paged).boxed();
    }
    let streaming: BoxStream<'static, _> = watcher(api.clone(), config.streaming_lists()).boxed();
    let mut fallback = Some((api, paged));
    let mut current = streaming;
    futures::stream::poll_fn(move |cx| {
        loop {
            let item = futures::ready!(current.poll_next_unpin(cx));
            if let Some(Err(err)) = &item
                && streaming_refused(err)
                && let Some((api, paged)) = fallback.take()
            {
                tracing::warn!(watch = name, error = %err, "the API server refuses streaming lists (WatchList); using paged lists");
                current = watcher(api, paged).boxed();
                continue;
            }
            return std::task::Poll::Ready(item);
        }
    })
    .boxed()
}

/// Whether a watch error is the server refusing `sendInitialEvents`: kube-apiserver answers 422
/// ("sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled") when the
/// feature is off; older servers reject the parameters it comes with (`resourceVersionMatch`) with 400/422.
fn streaming_refused(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 422 || status.code == 400)
}

/// Feeds a watch event into readiness and metrics.
pub fn observe_watch<K>(
    health: &Health,
    metrics: &Metrics,
    name: &'static str,
    event: &Result<watcher::Event<K>, watcher::Error>,
) {
    match event {
        Ok(watcher::Event::InitDone) => {
            health.watch_synced(name);
            metrics.watch_up.with_label_values(&[name]).set(1);
        }
        Ok(_) => watch_recovered(health, metrics, name),
        Err(err) => {
            let category = watch_error_category(err);
            tracing::error!(watch = name, category, error = %err, "watch failed; retrying with backoff (check RBAC and API server reachability)");
            metrics
                .watch_errors
                .with_label_values(&[name, category])
                .inc();
            metrics.watch_up.with_label_values(&[name]).set(0);
            health.watch_failed(name, err.to_string());
        }
    }
}

fn watch_recovered(health: &Health, metrics: &Metrics, name: &'static str) {
    if health.watch_failing(name) {
        tracing::info!(watch = name, "watch recovered");
    }
    health.watch_ok(name);
    if health.watch_is_synced(name) {
        metrics.watch_up.with_label_values(&[name]).set(1);
    }
}

/// How often a failing watch is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Clears a failing watch's error as soon as its request works again.
///
/// The watcher re-establishes a watch silently: after an API server restart, a watch that resumes from its
/// resourceVersion emits nothing until something changes, so the error of the outage would stay in
/// readiness for good. While the watch is failing, this lists the same resource with the same selectors
/// (one object), which proves both that the server answers and that we may read it (a 403 stays failing).
pub async fn probe_failing_watch<K>(
    api: Api<K>,
    params: kube::api::ListParams,
    name: &'static str,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = params.limit(1);
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        if health.watch_failing(name) && api.list(&params).await.is_ok() {
            watch_recovered(&health, &metrics, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff_after(expired: bool, policy: &mut WatchBackoff) -> Duration {
        policy.expired.store(expired, Ordering::Relaxed);
        policy.next().unwrap_or_default()
    }

    #[test]
    fn an_expired_watch_relists_at_once_even_after_an_outage() {
        let mut policy = WatchBackoff::default();
        // The outage: each failure waits longer (positive control: the delay does grow).
        let outage: Vec<Duration> = (0..5).map(|_| backoff_after(false, &mut policy)).collect();
        assert!(outage[4] > Duration::from_secs(5), "{outage:?}");
        // The connection is back and the server says 410: re-list now, not after the outage's delay.
        assert_eq!(backoff_after(true, &mut policy), Duration::ZERO);
        // The delay starts over: the server is reachable.
        assert!(backoff_after(false, &mut policy) < Duration::from_secs(2));
    }

    #[test]
    fn expiring_again_before_any_event_backs_off() {
        let mut policy = WatchBackoff::default();
        assert_eq!(backoff_after(true, &mut policy), Duration::ZERO);
        assert!(backoff_after(true, &mut policy) > Duration::ZERO);
        // An event in between (the stream resets the policy) makes the next expiry immediate again.
        policy.reset();
        assert_eq!(backoff_after(true, &mut policy), Duration::ZERO);
    }
}
