//! Routing keys and how they are taken from requests.

#[cfg(feature = "serde")]
mod deserialize;
mod http;

pub use self::http::{HttpKey, InvalidKeyPattern, KeySource};

use std::{borrow::Cow, fmt, sync::Arc};

/// The key a request is routed by, such as a user id or a room id.
///
/// ```
/// use tower_hashring::RoutingKey;
///
/// let key = RoutingKey::from("user-42");
/// assert_eq!(key.as_str(), "user-42");
/// assert_eq!(key.as_bytes(), b"user-42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingKey(Arc<str>);

impl RoutingKey {
    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes that are hashed onto the ring.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RoutingKey {
    fn from(key: &str) -> Self {
        Self(key.into())
    }
}

impl From<String> for RoutingKey {
    fn from(key: String) -> Self {
        Self(key.into())
    }
}

impl From<Cow<'_, str>> for RoutingKey {
    fn from(key: Cow<'_, str>) -> Self {
        Self(key.into())
    }
}

/// Takes the routing key from a request; `None` when the request carries none.
///
/// Implemented for closures `Fn(&Req) -> Option<K>` where `K: Into<RoutingKey>`, and by
/// [`HttpKey`] for `http::Request`.
///
/// ```
/// use tower_hashring::{KeyExtractor, RoutingKey};
///
/// struct Job { tenant: String }
/// let by_tenant = |job: &Job| Some(job.tenant.clone());
/// let key = by_tenant.extract(&Job { tenant: "acme".into() });
/// assert_eq!(key, Some(RoutingKey::from("acme")));
/// ```
pub trait KeyExtractor<Req> {
    /// Extracts the key.
    fn extract(&self, request: &Req) -> Option<RoutingKey>;
}

impl<F, Req, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> Option<K>,
    K: Into<RoutingKey>,
{
    fn extract(&self, request: &Req) -> Option<RoutingKey> {
        self(request).map(Into::into)
    }
}

/// What to do with a request that carries no key.
///
/// ```
/// use tower_hashring::MissingKeyPolicy;
///
/// assert_eq!(MissingKeyPolicy::default(), MissingKeyPolicy::Reject);
/// ```
///
/// With the `serde` feature it reads as `"reject"`, `"round-robin"` or `"random"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
#[non_exhaustive]
pub enum MissingKeyPolicy {
    /// Fail the request with [`MissingKey`](crate::error::MissingKey) (a gateway answers 400).
    #[default]
    Reject,
    /// Spread keyless requests over the ring in turn, in proportion to the weights.
    RoundRobin,
    /// Send each keyless request to a random position on the ring.
    Random,
}
