//! Pacing: at most R migrations per second, with jitter, so a ring change never turns into a
//! reconnect storm.

use std::time::Duration;

/// How fast migrations run.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_migrate::Pacing;
///
/// assert_eq!(Pacing::unlimited().gap(), None);
/// assert_eq!(Pacing::per_second(100).gap(), Some(Duration::from_millis(10)));
/// // Spread 1000 moves over 5 s: 200 per second.
/// assert_eq!(Pacing::over(Duration::from_secs(5), 1000), Pacing::per_second(200));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacing {
    per_second: Option<u32>,
    pub(crate) jitter: f64,
}

impl Pacing {
    /// No pacing: every affected connection is moved at once.
    pub fn unlimited() -> Self {
        Self {
            per_second: None,
            jitter: 0.0,
        }
    }

    /// At most `rate` migrations per second (0 is read as 1).
    pub fn per_second(rate: u32) -> Self {
        Self {
            per_second: Some(rate.max(1)),
            jitter: 0.0,
        }
    }

    /// The rate that spreads `count` migrations evenly over `window` (a drain).
    pub fn over(window: Duration, count: usize) -> Self {
        let secs = window.as_secs_f64();
        if secs <= 0.0 {
            return Self::unlimited();
        }
        let rate = (count as f64 / secs).ceil();
        Self::per_second(rate.clamp(1.0, f64::from(u32::MAX)) as u32)
    }

    /// Varies each gap by up to ± `fraction` of it (clamped to 0..=1), so clients that
    /// reconnect do not arrive in lockstep.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The mean gap between two migrations, or `None` when unpaced.
    pub fn gap(&self) -> Option<Duration> {
        self.per_second
            .map(|rate| Duration::from_secs_f64(1.0 / f64::from(rate)))
    }

    /// The next gap, with jitter applied.
    pub(crate) fn next_gap(&self) -> Option<Duration> {
        let gap = self.gap()?;
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Some(gap.mul_f64(factor))
    }
}

impl Default for Pacing {
    /// 1000 migrations per second with 20 % jitter.
    fn default() -> Self {
        Self::per_second(1000).jitter(0.2)
    }
}
