//! A consistent hash ring and a [`tower`] balancer that routes each request by a key.
//!
//! Stateful services (chat, games, collaborative documents) keep each user's state on one
//! server. This crate gives:
//!
//! - [`Ring`]: an immutable consistent hash ring over nodes with stable ids and weights,
//!   with O(1) allocation-free lookups, failover [`successors`](Ring::successors),
//!   [bounded loads](Ring::route_bounded), a [`RingDiff`] of the ranges whose owner changed,
//!   and a [ketama mode](HashScheme::Ketama) equal to nginx's `hash $key consistent`.
//! - [`balance`]: a `tower::Service` driven by a `tower::discover::Discover` stream that
//!   sends each request to the owner of the key a [`KeyExtractor`] finds in it, publishing
//!   every ring change as a versioned [`RingSnapshot`].
//!
//! ```
//! use tower_hashring::Ring;
//!
//! let ring = Ring::builder().node("backend-a", 1).node("backend-b", 1).build()?;
//! let owner = ring.route(b"user-42").unwrap();
//! println!("user-42 lives on {}", owner.id());
//! # Ok::<(), tower_hashring::RingError>(())
//! ```
//!
//! # Cargo features
//!
//! - `metrics` (off by default): `RingMetrics`, a `prometheus_client` collector of the
//!   ring's version, members and points, read from its newest snapshot at each scrape.
//!   Without it, nothing of Prometheus is compiled.
//! - `serde` (off by default): `Deserialize` for [`HttpKey`] (a list such as
//!   `[{ path = "/connect/{userId}" }, { query = "userId" }]`), [`KeySource`],
//!   [`MissingKeyPolicy`] (`"reject"`, `"round-robin"`, `"random"`) and [`LoadFactor`], for
//!   an application's config file.
#![forbid(unsafe_code)]

pub mod balance;
mod key;
#[cfg(feature = "metrics")]
mod metrics;
mod ring;
mod snapshot;

pub use self::{
    balance::{error, HashRingBalance, HashRingLayer, SharedHashRing},
    key::{HttpKey, InvalidKeyPattern, KeyExtractor, KeySource, MissingKeyPolicy, RoutingKey},
    ring::{
        HashScheme, InvalidLoadFactor, LoadFactor, LoadSource, MovedRange, Node, NodeId, Ring,
        RingBuilder, RingDiff, RingError, SuccessorCursor, Successors, DEFAULT_POINTS_PER_WEIGHT,
        MAX_NODES, MAX_POINTS,
    },
    snapshot::{RingSnapshot, RingWatch},
};

#[cfg(feature = "metrics")]
pub use self::metrics::RingMetrics;
