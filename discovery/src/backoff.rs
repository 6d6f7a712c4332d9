//! The wait between reconnects, shared by every source and publisher that keeps a
//! connection to a broker, a registry or an engine.

use std::{fmt::Display, time::Duration};

use tokio::time::Instant;

use crate::source_errors::SourceErrors;

/// Doubles from `first` up to `max`; back to `first` once a connection has worked.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

/// A connection that lasted this long was healthy: its loss starts the backoff over.
const HEALTHY: Duration = Duration::from_secs(10);

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// Waits before the next attempt, and doubles the wait after it.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }

    /// A connection was made: the next failure waits `first` again.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }

    /// A connection that had lasted `lasted` failed: wait, starting over if it was healthy.
    pub(crate) async fn wait_after(&mut self, lasted: Duration) {
        if lasted >= HEALTHY {
            self.reset();
        }
        self.wait().await;
    }
}

/// What a source does after a connected period failed: log it, count it, wait.
pub(crate) struct Reconnect {
    backoff: Backoff,
    lost: &'static str,
    errors: SourceErrors,
}

impl Reconnect {
    /// For a source whose failures are logged as `lost` and counted into `errors`.
    pub(crate) fn new(backoff: Backoff, lost: &'static str, errors: SourceErrors) -> Self {
        Self {
            backoff,
            lost,
            errors,
        }
    }

    /// A period that began at `started` failed with `error`: the members stay as they
    /// were, and the next attempt waits (starting over after a healthy connection).
    pub(crate) async fn after(&mut self, started: Instant, error: impl Display) {
        tracing::warn!(%error, "{}; keeping the last members", self.lost);
        self.errors.connection();
        self.backoff.wait_after(started.elapsed()).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_cap_and_start_over_after_a_healthy_connection() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let mut waits = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            backoff.wait_after(Duration::ZERO).await;
            waits.push(started.elapsed().as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        let started = Instant::now();
        backoff.wait_after(HEALTHY).await;
        assert_eq!(
            started.elapsed().as_millis(),
            100,
            "a healthy connection resets it"
        );
        backoff.reset();
        let started = Instant::now();
        backoff.wait().await;
        assert_eq!(started.elapsed().as_millis(), 100);
    }
}
