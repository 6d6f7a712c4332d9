//! How the config types read their fields from a config file (the `serde` feature): durations
//! as `"5s"` or `"250ms"`, `"off"` where a deadline or a limit can be switched off, and every
//! value checked, so a bad one is an error that names its field instead of a connection that
//! ends at once.

use std::{sync::Arc, time::Duration};

use serde::{de::Error as _, Deserialize, Deserializer};
use tokio::sync::Semaphore;

/// A deadline that must not be zero: a zero deadline would end every connection at once.
pub(crate) fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let duration: Duration = humantime_serde::deserialize(deserializer)?;
    if duration.is_zero() {
        return Err(D::Error::custom("must be longer than 0s"));
    }
    Ok(duration)
}

/// A deadline that can be off: `"off"` or `"0s"`.
pub(crate) fn off_or_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text == "off" {
        return Ok(None);
    }
    let duration = humantime_serde::re::humantime::parse_duration(&text).map_err(|e| {
        D::Error::custom(format!(
            "`{text}` is neither a duration (\"30s\") nor \"off\": {e}"
        ))
    })?;
    Ok(Some(duration).filter(|d| !d.is_zero()))
}

/// A byte limit where 0 means none.
pub(crate) fn zero_is_none<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    Ok(Some(u64::deserialize(deserializer)?).filter(|&limit| limit > 0))
}

/// A count of at least 1.
pub(crate) fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    match usize::deserialize(deserializer)? {
        0 => Err(D::Error::custom("must be at least 1")),
        count => Ok(count),
    }
}

pub(crate) fn some_at_least_one<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    at_least_one(deserializer).map(Some)
}

/// The largest request head: hyper needs at least 8 KiB.
pub(crate) fn head_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    match usize::deserialize(deserializer)? {
        bytes if bytes < 8192 => Err(D::Error::custom(format!(
            "{bytes} is below hyper's minimum of 8192"
        ))),
        bytes => Ok(bytes),
    }
}

/// A cap on open connections, as the semaphore the accept loops share.
pub(crate) fn connection_cap<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Arc<Semaphore>>, D::Error> {
    let cap = at_least_one(deserializer)?;
    Ok(Some(Arc::new(Semaphore::new(
        cap.min(Semaphore::MAX_PERMITS),
    ))))
}

/// A `u32` count of at least 1.
pub(crate) fn at_least_one_u32<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u32, D::Error> {
    match u32::deserialize(deserializer)? {
        0 => Err(D::Error::custom("must be at least 1")),
        count => Ok(count),
    }
}

/// An HTTP/2 flow-control window: from the protocol's initial 65,535 bytes to its largest,
/// 2^31 - 1 (RFC 9113 §6.9.2).
pub(crate) fn flow_window<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    match u32::deserialize(deserializer)? {
        bytes @ 65_535..=0x7fff_ffff => Ok(bytes),
        bytes => Err(D::Error::custom(format!(
            "{bytes} is outside HTTP/2's window range, 65535 to 2147483647"
        ))),
    }
}
