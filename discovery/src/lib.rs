//! Where the gateway learns its backends: [`tower::discover::Discover`] streams of
//! [`Change<NodeId, Backend>`](tower::discover::Change), usable with the balancer on their own.
//!
//! - [`StaticDiscovery`]: a fixed list (the demo's and `run --backend`'s).
//! - [`RedisRegistry`]: backends register themselves with a heartbeat and a TTL; every
//!   gateway follows the full member set ([`RedisRegistry::discover`]), so gateways fed by the same
//!   Redis converge on the same members, hence the same ring.
//! - [`DockerSource`]: containers carrying a service label, gated by their Docker health
//!   status; [`DockerScaler`] starts and stops more of them.
//! - [`amqp_members`]: backends announce `up` (repeated within a TTL) and `down` on a
//!   RabbitMQ fanout exchange ([`AmqpAnnouncer`]), idempotently, with instance ids.
//! - [`AmqpEvents`]: publishes every ring change and migration to a RabbitMQ fanout
//!   exchange, so backends can hand state off before a user arrives.
//! - [`HealthCheck::wrap`]: wraps any of them and lets a backend in only while its active
//!   health check (HTTP `GET /health`, or a TCP connect) passes.
//! - [`FlapDamping::wrap`]: holds out a member that keeps leaving and coming back, so one
//!   bad backend cannot cause a storm of ring changes.
//!
//! - [`Membership`]: several of them merged into the one member set a ring is built from
//!   (which source owns an id, collisions, admin weights, leave and return, damping, health).
//! - [`Scaler`]: starts and stops backends on request; [`DockerScaler`] and [`SwarmScaler`]
//!   are two.
//!
//! The task-fed sources all hand out a [`MemberChanges`] stream. Each source's client is
//! behind a cargo feature, off by default, so an app that needs only static lists and
//! health checks compiles none of them: `redis` (Redis), `amqp` (RabbitMQ, lapin),
//! `docker` (bollard).
//!
//! # Cargo features
//!
//! - `redis`, `amqp`, `docker` (off by default): the sources above, with their clients.
//! - `metrics` (off by default): `DiscoveryMetrics`, the errors of the sources by `Source`
//!   and `ErrorKind` (a lost connection, an ignored entry), for a `prometheus_client`
//!   registry the application owns, given to each source with `RedisRegistry::metrics`,
//!   `DockerSource::metrics`, `SwarmSource::metrics` or `amqp_members_counted`. Without it,
//!   nothing of Prometheus is compiled and the sources count nothing.
//! - `serde` (off by default): `Deserialize` for [`HealthCheck`], [`FlapDamping`] and
//!   `ContainerLimits` (with `docker`), durations as `"1s"`, for an application's config
//!   file. [`Backend`] always deserializes (sources read it as JSON).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use discovery::{Backend, StaticDiscovery};
//! use futures_util::StreamExt;
//! use tower::discover::Change;
//!
//! let mut members = StaticDiscovery::new([Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap())]);
//! let Some(Ok(Change::Insert(id, backend))) = members.next().await else { unreachable!() };
//! assert_eq!((id.as_str(), backend.weight), ("backend-a", 1));
//! # }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "amqp")]
mod amqp_members;
mod backend;
#[cfg(any(feature = "redis", feature = "amqp", feature = "docker"))]
mod backoff;
mod changes;
mod damping;
#[cfg(feature = "serde")]
mod deserialize;
#[cfg(feature = "docker")]
mod docker;
#[cfg(feature = "amqp")]
mod events;
mod health;
mod membership;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "redis")]
mod redis;
mod scale;
#[cfg(any(feature = "redis", feature = "amqp", feature = "docker"))]
mod source_errors;
mod static_list;
#[cfg(feature = "docker")]
mod swarm;

#[cfg(all(feature = "amqp", feature = "metrics"))]
pub use self::amqp_members::amqp_members_counted;
#[cfg(feature = "docker")]
pub use self::docker::{
    ContainerLimits, DockerError, DockerScaler, DockerSource, GATEWAY_LABEL, PORT_LABEL,
    SERVICE_LABEL, WEIGHT_LABEL,
};
#[cfg(feature = "metrics")]
pub use self::metrics::{DiscoveryMetrics, ErrorKind, Source};
#[cfg(feature = "redis")]
pub use self::redis::{Heartbeat, RedisError, RedisRegistry};
#[cfg(feature = "docker")]
pub use self::swarm::{SwarmScaler, SwarmSource};
#[cfg(feature = "amqp")]
pub use self::{
    amqp_members::{amqp_members, AmqpAnnouncer, Announcement, MAX_TTL},
    events::{ring_event, AmqpEvents},
};
pub use self::{
    backend::{Backend, MemberSet},
    changes::MemberChanges,
    damping::{FlapDamping, HeldDown},
    health::HealthCheck,
    membership::{Member, MemberState, Membership, MembershipChanges, OffRing, Origin, MAX_WEIGHT},
    scale::{Ownership, ScaleError, ScaleFuture, ScaledMembers, Scaler},
    static_list::StaticDiscovery,
};
