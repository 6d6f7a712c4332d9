//! Health checks and flap damping read from a config file (the `serde` feature), with
//! durations as `"1s"` or `"250ms"`.

use std::time::Duration;

use serde::{de::Error as _, Deserialize, Deserializer};

use crate::{FlapDamping, HealthCheck};

/// A duration that must not be zero (a check every 0 s, a window of 0 s mean nothing).
fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let duration: Duration = humantime_serde::deserialize(deserializer)?;
    if duration.is_zero() {
        return Err(D::Error::custom("must be longer than 0s"));
    }
    Ok(duration)
}

fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    match u32::deserialize(deserializer)? {
        0 => Err(D::Error::custom("must be at least 1")),
        count => Ok(count),
    }
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CheckKind {
    Http,
    Tcp,
}

/// `{ check = "http", path = "/health", interval = "1s", timeout = "1s", up = 2, down = 2 }`
/// or `{ check = "tcp" }`; a field left out keeps its default.
///
/// ```
/// use std::time::Duration;
/// use discovery::HealthCheck;
///
/// let check: HealthCheck = serde_json::from_str(r#"{ "check": "http", "interval": "250ms" }"#)?;
/// assert_eq!(check, HealthCheck::http("/health").interval(Duration::from_millis(250)));
/// let error = serde_json::from_str::<HealthCheck>(r#"{ "check": "tcp", "path": "/x" }"#);
/// assert!(error.unwrap_err().to_string().contains("tcp check has no path"));
/// # Ok::<(), serde_json::Error>(())
/// ```
impl<'de> Deserialize<'de> for HealthCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Written {
            check: CheckKind,
            path: Option<String>,
            #[serde(default, deserialize_with = "some_positive")]
            interval: Option<Duration>,
            #[serde(default, deserialize_with = "some_positive")]
            timeout: Option<Duration>,
            #[serde(default = "two", deserialize_with = "at_least_one")]
            up: u32,
            #[serde(default = "two", deserialize_with = "at_least_one")]
            down: u32,
        }
        let written = Written::deserialize(deserializer)?;
        let check = match (written.check, written.path) {
            (CheckKind::Http, None) => HealthCheck::http("/health"),
            (CheckKind::Http, Some(path)) if path.starts_with('/') => HealthCheck::http(path),
            (CheckKind::Http, Some(path)) => {
                return Err(D::Error::custom(format!(
                    "path: `{path}` must start with /"
                )))
            }
            (CheckKind::Tcp, None) => HealthCheck::tcp(),
            (CheckKind::Tcp, Some(_)) => return Err(D::Error::custom("a tcp check has no path")),
        };
        let mut check = check.thresholds(written.up, written.down);
        if let Some(interval) = written.interval {
            check = check.interval(interval);
        }
        if let Some(timeout) = written.timeout {
            check = check.timeout(timeout);
        }
        Ok(check)
    }
}

fn some_positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    positive(deserializer).map(Some)
}

fn two() -> u32 {
    2
}

/// `{ limit = 4, window = "60s", hold_down = "30s" }`; a field left out keeps its default
/// (those of [`FlapDamping::default`]).
///
/// ```
/// use discovery::FlapDamping;
///
/// let damping: FlapDamping = serde_json::from_str(r#"{ "limit": 2, "hold_down": "5s" }"#)?;
/// assert_eq!(damping.to_string(), "held out for 5s after 2 departures within 60s");
/// assert!(serde_json::from_str::<FlapDamping>(r#"{ "limit": 0 }"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
impl<'de> Deserialize<'de> for FlapDamping {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Written {
            #[serde(default, deserialize_with = "some_count")]
            limit: Option<u32>,
            #[serde(default, deserialize_with = "some_positive")]
            window: Option<Duration>,
            #[serde(default, deserialize_with = "some_positive")]
            hold_down: Option<Duration>,
        }
        let written = Written::deserialize(deserializer)?;
        let default = FlapDamping::default();
        Ok(FlapDamping::new(
            written.limit.unwrap_or(default.limit as u32),
            written.window.unwrap_or(default.window),
            written.hold_down.unwrap_or(default.hold_down),
        ))
    }
}

fn some_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    at_least_one(deserializer).map(Some)
}

/// Docker's limits are checked here rather than by a refused container later.
#[cfg(feature = "docker")]
pub(crate) mod container {
    use serde::{de::Error as _, Deserialize, Deserializer};

    /// Docker refuses less than 6 MiB.
    const MIN_MEMORY: u64 = 6 << 20;
    const MAX_MEMORY: u64 = 1 << 40;

    pub(crate) fn memory_bytes<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<u64, D::Error> {
        match u64::deserialize(deserializer)? {
            bytes @ MIN_MEMORY..=MAX_MEMORY => Ok(bytes),
            bytes => Err(D::Error::custom(format!(
                "{bytes} is outside 6 MiB ({MIN_MEMORY}) ..= 1 TiB"
            ))),
        }
    }

    pub(crate) fn cpus<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        match f64::deserialize(deserializer)? {
            cpus if cpus.is_finite() && (0.01..=1024.0).contains(&cpus) => Ok(cpus),
            cpus => Err(D::Error::custom(format!("{cpus} is outside 0.01..=1024"))),
        }
    }

    pub(crate) fn pids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        super::at_least_one(deserializer)
    }
}
