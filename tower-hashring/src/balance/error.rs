//! Error types of the balancer.
//!
//! The balancer's error type is [`BoxError`]; these typed errors are boxed inside it and
//! can be found with `downcast_ref`, or mapped to an HTTP status with [`http_status`].

use std::fmt;

use http::StatusCode;

/// A type-erased error: tower's own, the one the whole workspace uses.
pub use tower::BoxError;

/// The request carried no routing key and the policy is
/// [`MissingKeyPolicy::Reject`](crate::MissingKeyPolicy::Reject).
///
/// ```
/// use tower_hashring::error::MissingKey;
/// assert_eq!(MissingKey::new().to_string(), "the request carries no routing key");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissingKey(());

impl MissingKey {
    /// Creates the error.
    pub const fn new() -> Self {
        Self(())
    }
}

impl fmt::Display for MissingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request carries no routing key")
    }
}

impl std::error::Error for MissingKey {}

/// The ring has no node that can take keys (no members, or all drained).
///
/// ```
/// use tower_hashring::error::NoBackend;
/// assert_eq!(NoBackend::new().to_string(), "no backend is on the ring");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoBackend(());

impl NoBackend {
    /// Creates the error.
    pub const fn new() -> Self {
        Self(())
    }
}

impl fmt::Display for NoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no backend is on the ring")
    }
}

impl std::error::Error for NoBackend {}

/// Neither the key's owner nor any successor was ready; carries the last backend error.
///
/// ```
/// use tower_hashring::error::NoReadyBackend;
/// let err = NoReadyBackend::new(3, None);
/// assert_eq!(err.to_string(), "none of the 3 candidate backends was ready");
/// ```
#[derive(Debug)]
pub struct NoReadyBackend {
    tried: usize,
    source: Option<BoxError>,
}

impl NoReadyBackend {
    /// Creates the error: `tried` candidates, the last one failing with `source`.
    pub fn new(tried: usize, source: Option<BoxError>) -> Self {
        Self { tried, source }
    }

    /// How many candidates were tried.
    pub fn tried(&self) -> usize {
        self.tried
    }
}

impl fmt::Display for NoReadyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "none of the {} candidate backends was ready", self.tried)
    }
}

impl std::error::Error for NoReadyBackend {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// The discovery stream failed.
///
/// ```
/// use tower_hashring::error::DiscoverError;
/// let err = DiscoverError::new("redis is down".into());
/// assert_eq!(err.to_string(), "service discovery failed: redis is down");
/// ```
#[derive(Debug)]
pub struct DiscoverError(BoxError);

impl DiscoverError {
    /// Wraps the discovery error.
    pub fn new(source: BoxError) -> Self {
        Self(source)
    }
}

impl fmt::Display for DiscoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service discovery failed: {}", self.0)
    }
}

impl std::error::Error for DiscoverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The HTTP status a gateway should answer for a balancer error: 400 for
/// [`MissingKey`], 503 for [`NoBackend`] and [`NoReadyBackend`], 502 for anything else
/// (the backend failed).
///
/// ```
/// use http::StatusCode;
/// use tower_hashring::error::{http_status, BoxError, MissingKey};
///
/// let err: BoxError = MissingKey::new().into();
/// assert_eq!(http_status(&*err), StatusCode::BAD_REQUEST);
/// ```
pub fn http_status(error: &(dyn std::error::Error + 'static)) -> StatusCode {
    if error.is::<MissingKey>() {
        StatusCode::BAD_REQUEST
    } else if error.is::<NoBackend>() || error.is::<NoReadyBackend>() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    }
}
