//! Tracks live WebSocket connections by routing key and, when the hash ring changes,
//! migrates exactly those whose owner changed: paced, and reported to a hook.
//!
//! The pieces, usable on their own:
//! - the live connections are `tower_ws_proxy`'s one `LiveConnections`,
//!   [`LiveConnections`](tower_ws_proxy::LiveConnections): key and ring position, backend,
//!   ring version, start time, and a handle that can move the connection;
//! - [`plan`]: which registered connections a ring change affects, from the ring diff
//!   ([`plan_bounded`] where the balancer routes with bounded loads);
//! - [`Pacing`]: at most R migrations per second, with jitter;
//! - [`MigrationHook`]: called for each migration; closures implement it;
//! - [`Migrator`]: subscribes to a ring's snapshots and runs the above on every change;
//! - [`MigrateLayer`]: the tower layer above `tower_ws_proxy`'s WebSocket proxy that has it
//!   register each proxied WebSocket as a [`ProxiedConnection`], which moves live (dial the
//!   new owner, switch the relay at a message boundary) or by reconnect.
//!
//! ```
//! use std::time::Duration;
//! use tower_ws_migrate::{MigrationPolicy, Pacing};
//!
//! let policy = MigrationPolicy::reconnect(); // 1012 "Service Restart"
//! let pacing = Pacing::per_second(500).jitter(0.2);
//! assert_eq!(pacing.gap(), Some(Duration::from_millis(2)));
//! # let _ = policy;
//! ```
//!
//! # Cargo features
//!
//! - `metrics` (off by default): `MigrationMetrics` and `Migrator::metrics`, which record
//!   every migration (by policy, outcome and fallback reason; in flight; duration; upstreams
//!   opened by live moves) into a `prometheus_client` registry the application owns.
//!   Without it, nothing of Prometheus is compiled and the migrator records nothing.
//! - `serde` (off by default): `Deserialize` for [`MigrationPolicy`] (`"live"`, or a table
//!   with the close code, checked), [`Pacing`] and [`MigrationSecret`] (16 characters at
//!   least), for an application's config file.

#![forbid(unsafe_code)]

mod connection;
#[cfg(feature = "serde")]
mod deserialize;
mod dial;
mod hook;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod migrator;
mod pace;
mod plan;
mod policy;
mod signature;

pub use self::{
    connection::{ProxiedConnection, UpstreamLookup, MIGRATED_FROM},
    hook::{Fallback, FallbackKind, MigrationEvent, MigrationHook, MigrationStats, Outcome},
    layer::{MigrateLayer, MigrateService, RoutePolicy},
    migrator::Migrator,
    pace::Pacing,
    plan::{plan, plan_bounded, PlannedMove},
    policy::{Migrate, MigrateFuture, MigrationPolicy},
    signature::{BadSignature, MigrationSecret, ShortSecret, DEFAULT_MAX_AGE, MIGRATION_SIGNATURE},
};

#[cfg(feature = "metrics")]
pub use self::metrics::MigrationMetrics;
