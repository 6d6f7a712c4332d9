//! The gateway's own sections. Everything a library defines (the relay, the upstream, the
//! HTTP limits, the key, the migration policy and pacing, health checks, damping, container
//! limits) is that library's type, read as it is.

use std::{net::SocketAddr, time::Duration};

use discovery::{ContainerLimits, FlapDamping, HealthCheck};
use serde::Deserialize;
use tower_hashring::{HttpKey, LoadFactor, MissingKeyPolicy};
use tower_ws_migrate::{MigrationPolicy, MigrationSecret, Pacing};

use super::values;

/// `[listen]`: where the gateway listens, and on how many threads.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// The public listener (clients). Default: 127.0.0.1:7000.
    pub public: SocketAddr,
    /// The admin listener. Default: 127.0.0.1:7001.
    pub admin: SocketAddr,
    /// A listener that serves `GET /metrics` alone, without the admin token (for a scraper
    /// that should not hold it); `None`: metrics only on the admin listener.
    pub metrics: Option<SocketAddr>,
    /// Threads serving the public listener, each a single-threaded runtime with its own
    /// `SO_REUSEPORT` listener, so a WebSocket's relay never wakes another thread. 0 serves
    /// on the runtime that started the gateway (the default of [`Listen::default`]; a config
    /// file's default is one per core).
    #[serde(default = "one_per_core")]
    pub workers: usize,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            public: ([127, 0, 0, 1], 7000).into(),
            admin: ([127, 0, 0, 1], 7001).into(),
            metrics: None,
            workers: 0,
        }
    }
}

impl Listen {
    /// Loopback, on ports the system picks (read them off the running gateway): for tests
    /// and for gateways embedded in another program.
    pub fn ephemeral() -> Self {
        Self {
            public: ([127, 0, 0, 1], 0).into(),
            admin: ([127, 0, 0, 1], 0).into(),
            ..Self::default()
        }
    }

    /// The binary's `[listen]` when a config file has none (or there is no file): one
    /// worker per core.
    pub fn from_file() -> Self {
        Self {
            workers: one_per_core(),
            ..Self::default()
        }
    }
}

/// The reference binary's default: one worker per core (measured better than one shared
/// multi-threaded runtime on every axis; see `bench/README.md`).
fn one_per_core() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `[routing]`: where requests carry their key, and what happens without one.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// Where requests carry their key, tried in order. Default: `/connect/{userId}`, then
    /// `?userId=`.
    pub key: HttpKey,
    /// What happens to requests without a key.
    pub missing_key: MissingKeyPolicy,
    /// Bounded loads: a key goes to the first backend clockwise whose live WebSockets are
    /// under this factor × the mean (weighted); `None` routes to the owner alone.
    pub load_factor: Option<LoadFactor>,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            key: Self::default_key(),
            missing_key: MissingKeyPolicy::Reject,
            load_factor: None,
        }
    }
}

impl Routing {
    /// The default routes: `/connect/{userId}`, then `?userId=`.
    pub fn default_key() -> HttpKey {
        HttpKey::new()
            .path("/connect/{userId}")
            .expect("a valid built-in pattern")
            .query("userId")
    }
}

/// `[proxy]`: what the public stack lets through.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Proxy {
    /// The most WebSockets proxied at once; past it, 503. `None`: sized to the descriptor
    /// limit by the binary, 100,000 otherwise.
    #[serde(deserialize_with = "values::some_at_least_one")]
    pub max_websockets: Option<usize>,
    /// The most an HTTP response head may take (408 past it). Default: 30 s.
    #[serde(deserialize_with = "values::positive")]
    pub request_timeout: Duration,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            max_websockets: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[shutdown]`: how the gateway lets go of its connections on SIGTERM.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// WebSockets are closed with 1001 spread over this window. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Then WebSockets and requests still open get this long before the gateway drops
    /// them. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// After an upgrade (SIGUSR2) handed the plaintext WebSockets over, the ones that stay
    /// (TLS, HTTP/2 streams) are served this long before the 1001s. Default: 60 s.
    #[serde(with = "humantime_serde")]
    pub upgrade_drain: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(5),
            grace: Duration::from_secs(5),
            upgrade_drain: Duration::from_secs(60),
        }
    }
}

/// `[migration]`: how WebSockets whose owner changed on the ring are moved.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationConfig {
    /// The policy of routes without one of their own (default: live, falling back to a 1012
    /// close).
    pub policy: MigrationPolicy,
    /// Policies by path prefix; the first match wins.
    pub routes: Vec<RouteMigration>,
    /// How fast connections are moved (default: 1000 per second, 20 % jitter).
    pub pacing: Pacing,
    /// Connections of a removed backend move over this window (default: 5 s).
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// Signs live moves so backends can check `x-wscluster-migrated-from` (default: none),
    /// given inline or as `{ file = "…" }`.
    #[serde(deserialize_with = "values::migration_secret")]
    pub secret: Option<MigrationSecret>,
    /// A migration with no outcome after this long counts as failed and frees its slot
    /// (default: connect + handshake + switch + close timeouts).
    #[serde(deserialize_with = "values::some_positive")]
    pub deadline: Option<Duration>,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            policy: MigrationPolicy::live(),
            routes: Vec::new(),
            pacing: Pacing::default(),
            drain_window: Duration::from_secs(5),
            secret: None,
            deadline: None,
        }
    }
}

/// The migration policy of the requests under one path prefix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMigration {
    /// Paths that start with this.
    #[serde(deserialize_with = "values::path_prefix")]
    pub prefix: String,
    /// Their policy.
    pub policy: MigrationPolicy,
}

/// `[discovery]`: membership sources beyond the configured list, and health checks.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Backends registered in Redis.
    pub redis: Option<RedisSource>,
    /// Backends that announce themselves on a RabbitMQ fanout exchange.
    pub amqp: Option<AmqpSource>,
    /// Backends running as labelled Docker containers.
    pub docker: Option<DockerConfig>,
    /// Backends running as the tasks of labelled Docker Swarm services.
    pub swarm: Option<SwarmConfig>,
    /// Active health checks for configured and discovered backends (not for the demo's
    /// in-process ones): a backend is on the ring only while they pass.
    pub health: Option<HealthCheck>,
    /// Holds out discovered members that keep leaving and coming back; `false` switches it
    /// off. Default: on, [`FlapDamping::default`].
    #[serde(deserialize_with = "values::table_or_false")]
    pub damping: Option<FlapDamping>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            redis: None,
            amqp: None,
            docker: None,
            swarm: None,
            health: None,
            damping: Some(FlapDamping::default()),
        }
    }
}

impl DiscoveryConfig {
    /// Whether any source besides the configured list is set.
    pub fn discovers(&self) -> bool {
        self.redis.is_some() || self.amqp.is_some() || self.docker.is_some() || self.swarm.is_some()
    }
}

/// Backends that register themselves in Redis (`wsbackend --redis`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSource {
    /// `redis://host:port/db`.
    #[serde(deserialize_with = "values::redis_url")]
    pub url: String,
    /// The service name their registrations are filed under (default: `wscluster`).
    #[serde(default = "wscluster")]
    pub service: String,
    /// How often the whole set is re-read even without an announcement (default: 1 s).
    #[serde(default = "one_second", deserialize_with = "values::positive")]
    pub resync: Duration,
}

/// Backends that announce themselves on a RabbitMQ fanout exchange (`wsbackend --amqp`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSource {
    /// `amqp://user:password@host:port/vhost`.
    #[serde(deserialize_with = "values::amqp_url")]
    pub url: String,
    /// The exchange (default: `wscluster.members`).
    #[serde(default = "members_exchange")]
    pub exchange: String,
}

/// Backends that run as Docker containers labelled `wscluster.service=<service>`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The service label's value (default: `wscluster`).
    #[serde(default = "wscluster")]
    pub service: String,
    /// The network the gateway reaches them on (default: their first).
    pub network: Option<String>,
    /// With an image, the admin API starts (`POST /admin/backends`) and stops containers.
    pub image: Option<String>,
    /// The most containers the admin API may run (default: 16).
    #[serde(default = "sixteen", deserialize_with = "values::at_least_one")]
    pub cap: usize,
    /// Each container's memory, CPU and process limits.
    #[serde(default)]
    pub limits: ContainerLimits,
}

/// Backends that run as the tasks of Swarm services labelled `wscluster.service=<service>`
/// (one member per replica slot, `<service name>.<slot>`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmConfig {
    /// The service label's value (default: `wscluster`).
    #[serde(default = "wscluster")]
    pub service: String,
    /// The overlay network the gateway reaches the tasks on (default: their first).
    pub network: Option<String>,
    /// The admin API scales the one Swarm service carrying the label (`POST
    /// /admin/backends`: one more replica, `DELETE /admin/backends`: one fewer).
    #[serde(default)]
    pub scale: bool,
    /// The most replicas the admin API may run (default: 16).
    #[serde(default = "sixteen", deserialize_with = "values::at_least_one")]
    pub cap: u64,
}

/// `[cluster]`: the other replicas of this gateway, asked every `interval` for their ring
/// version, digest and connections (`GET /admin/replica`, with this gateway's own admin
/// token: replicas share it), so `/admin/cluster`, the dashboard and
/// `wscluster_cluster_disagreement_seconds_total` show whether they route alike.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The replicas' admin addresses (`"10.0.0.2:7001"`); this gateway's own may be listed.
    pub peers: Vec<SocketAddr>,
    /// Replicas are the running tasks of the Swarm service labelled
    /// `wscluster.gateway=<swarm>`, at its `wscluster.port` label (the admin port).
    pub swarm: Option<String>,
    /// The overlay network the replicas are reached on (default: their first).
    pub network: Option<String>,
    /// How often the replicas are asked (default: 2 s); each answer has that long at most.
    #[serde(deserialize_with = "values::positive")]
    pub interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            swarm: None,
            network: None,
            interval: Duration::from_secs(2),
        }
    }
}

/// `[events]`: a RabbitMQ fanout exchange that receives every ring change and migration as
/// JSON.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// `amqp://user:password@host:port/vhost`.
    #[serde(deserialize_with = "values::amqp_url")]
    pub url: String,
    /// The exchange, declared durable and fanout (default: `wscluster.events`).
    #[serde(default = "events_exchange")]
    pub exchange: String,
}

fn wscluster() -> String {
    "wscluster".into()
}

fn members_exchange() -> String {
    "wscluster.members".into()
}

fn events_exchange() -> String {
    "wscluster.events".into()
}

fn sixteen<T: From<u8>>() -> T {
    T::from(16)
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
