//! Membership in Redis: backends register with a heartbeat and a TTL, gateways follow the
//! full member set.
//!
//! Layout, per service: one key per backend, `wscluster:{service}:backend:{id}`, holding the
//! backend's JSON and expiring after the TTL unless its heartbeat renews it; and a pub/sub
//! channel, `wscluster:{service}:members`, on which a backend announces that it (re)appeared
//! or left. A gateway re-reads the whole set on every announcement, periodically, and after
//! every reconnect, so a lapsed key (a crashed backend) is noticed within the TTL plus the
//! resync interval, a repeated registration changes nothing, and every gateway reading the
//! same Redis ends with the same members: the same ring, with no lock.

mod registry;
mod watch;

pub use self::registry::{Heartbeat, RedisRegistry};

/// Redis could not be reached, or answered with an error.
///
/// ```
/// use discovery::RedisRegistry;
///
/// let error = RedisRegistry::new("http://not-redis", "chat").unwrap_err();
/// assert!(error.to_string().starts_with("redis: "));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(#[from] redis::RedisError);
