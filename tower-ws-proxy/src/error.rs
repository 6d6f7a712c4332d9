//! The crate's type-erased error.

/// A type-erased error, `tower::BoxError` (through `tower_hashring`): what the services
/// below the proxy may fail with, and what a request body's error is boxed into.
///
/// ```
/// use tower_ws_proxy::{BoxError, UpstreamError};
///
/// let error: BoxError = UpstreamError::HandshakeTimeout.into();
/// assert!(error.is::<UpstreamError>());
/// ```
pub use tower_hashring::error::BoxError;
