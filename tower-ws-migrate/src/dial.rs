//! A live move's dial of its new owner, tried again after a failure a moment may cure.
//!
//! A backend joins a gateway's ring once that gateway's own checks pass, and every gateway
//! then dials it for the users it moves there at once: a connect refused or reset by a
//! backend that has only just started (or whose address the network of another node learns
//! a moment later) is answered better by a second try a little later than by closing the
//! client, who would then reconnect to that same backend anyway.

use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tower_ws_proxy::UpstreamError;

/// When a failed dial is tried again: at most `attempts` dials, the n-th retry after
/// `first_backoff × 2^(n-1)`, and none that would start after `budget` from the first dial,
/// so a live move's dial stays well within the migrator's deadline (15 s by default,
/// shared with the switch and the old backend's close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DialRetry {
    attempts: u32,
    first_backoff: Duration,
    budget: Duration,
}

impl DialRetry {
    /// Four dials at most: after 100, 200 and 400 ms, within 3 s.
    pub(crate) const DEFAULT: DialRetry = DialRetry {
        attempts: 4,
        first_backoff: Duration::from_millis(100),
        budget: Duration::from_secs(3),
    };

    /// The wait before retry number `retry` (1 for the first).
    fn backoff(&self, retry: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
    }

    /// Runs `dial` until it succeeds, fails in a way no retry would cure, or the schedule
    /// is spent; the last result.
    pub(crate) async fn run<T, F, Fut>(&self, mut dial: F) -> Result<T, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let started = Instant::now();
        let mut retry = 1;
        loop {
            let error = match dial().await {
                Err(error) if worth_retrying(&error) && retry < self.attempts => error,
                done => return done,
            };
            let wait = self.backoff(retry);
            if started.elapsed() + wait > self.budget {
                return Err(error);
            }
            // Worth seeing: a new owner that refuses at first is a network or startup delay.
            tracing::info!(%error, retry, ?wait, "dialing the new owner again");
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }
}

/// A refused, reset or unreachable connect, or an exchange the backend broke off: what a
/// backend that is starting (or a network still learning its address) does. A handshake
/// that timed out already took seconds and is not tried again.
fn worth_retrying(error: &UpstreamError) -> bool {
    matches!(error, UpstreamError::Connect(_) | UpstreamError::Http(_))
}

#[cfg(test)]
mod tests {
    use std::{
        io::ErrorKind,
        sync::{Arc, Mutex},
    };

    use super::*;

    type Dial = std::pin::Pin<Box<dyn Future<Output = Result<(), UpstreamError>> + Send>>;

    /// A dial that fails with each of `failures` in turn (then succeeds), taking `takes`
    /// each time; the times it was called, from the start.
    fn scripted(
        failures: Vec<UpstreamError>,
        takes: Duration,
    ) -> (impl FnMut() -> Dial, Arc<Mutex<Vec<Duration>>>) {
        let start = Instant::now();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(failures.into_iter()));
        let seen = calls.clone();
        let dial = move || {
            seen.lock().unwrap().push(start.elapsed());
            let failures = failures.clone();
            Box::pin(async move {
                tokio::time::sleep(takes).await;
                failures.lock().unwrap().next().map_or(Ok(()), Err)
            }) as Dial
        };
        (dial, calls)
    }

    fn refused() -> UpstreamError {
        UpstreamError::Connect(ErrorKind::ConnectionRefused.into())
    }

    fn millis(ms: &[u64]) -> Vec<Duration> {
        ms.iter().copied().map(Duration::from_millis).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_dial_is_tried_again_with_growing_waits_until_it_connects() {
        let (dial, calls) = scripted(vec![refused(), refused()], Duration::ZERO);
        let result = DialRetry::DEFAULT.run(dial).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(*calls.lock().unwrap(), millis(&[0, 100, 300]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempts_are_bounded() {
        let failures = (0..10).map(|_| refused()).collect();
        let (dial, calls) = scripted(failures, Duration::ZERO);
        let result = DialRetry::DEFAULT.run(dial).await;
        assert!(
            matches!(result, Err(UpstreamError::Connect(_))),
            "{result:?}"
        );
        assert_eq!(*calls.lock().unwrap(), millis(&[0, 100, 300, 700]));
    }

    /// Dials that each time out after 2 s: no retry may start after 3 s from the first.
    #[tokio::test(start_paused = true)]
    async fn no_retry_starts_past_the_budget() {
        let timed_out = || UpstreamError::Connect(ErrorKind::TimedOut.into());
        let failures = (0..10).map(|_| timed_out()).collect();
        let (dial, calls) = scripted(failures, Duration::from_secs(2));
        let started = Instant::now();
        let result = DialRetry::DEFAULT.run(dial).await;
        assert!(result.is_err());
        assert_eq!(*calls.lock().unwrap(), millis(&[0, 2_100]));
        assert_eq!(started.elapsed(), Duration::from_millis(4_100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handshake_that_timed_out_is_not_tried_again() {
        let (dial, calls) = scripted(vec![UpstreamError::HandshakeTimeout], Duration::ZERO);
        let result = DialRetry::DEFAULT.run(dial).await;
        assert!(matches!(result, Err(UpstreamError::HandshakeTimeout)));
        assert_eq!(calls.lock().unwrap().len(), 1);
    }
}
