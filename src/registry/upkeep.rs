//! The registry's upkeep: what it keeps (answers, and clients with their connections and parsed trust
//! store) is dropped once its TTL has run out, not only when the cache is full; and all of it when this
//! replica stops leading, since placement (most of the reads) is the leader's work. The long soak showed a
//! replica that had led keeping the registry's clients for good, a step in its memory as a follower.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Registry;

/// How often expired answers and idle clients are dropped.
pub const SWEEP: Duration = Duration::from_secs(60);

/// Runs until `shutdown`: sweeps every [`SWEEP`], and forgets everything when `leadership` turns false.
pub async fn upkeep(
    registry: Arc<Registry>,
    mut leadership: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP, SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = *leadership.borrow_and_update();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = sweep.tick() => registry.drop_expired(),
            Ok(()) = leadership.changed() => {
                let now_leading = *leadership.borrow_and_update();
                if leading && !now_leading {
                    tracing::debug!("no longer the leader: dropping the registry's answers and clients");
                    registry.forget();
                }
                leading = now_leading;
            }
        }
    }
}
