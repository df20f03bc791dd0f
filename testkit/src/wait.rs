//! Waiting on conditions: `eventually` (until true, or fail with what was awaited) and `consistently`
//! (stays true for a period; pair it with a positive control).

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or fails the test after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `check` stays true for `period` (for "nothing happens" assertions).
pub async fn consistently<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        assert!(check().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const TIMEOUT: Duration = Duration::from_secs(30);
