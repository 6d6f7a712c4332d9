//! The reference gateway: the hash-ring balancer, live migration and the WebSocket proxy
//! over axum, plus an admin API that shows the ring and, through a [`Scaler`], starts and
//! stops backends.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use discovery::{
    amqp_members_counted, AmqpEvents, ContainerLimits, DiscoveryMetrics, DockerScaler,
    DockerSource, FlapDamping, HealthCheck, Membership, MembershipChanges, Origin, RedisRegistry,
    Scaler, StaticDiscovery, SwarmScaler, SwarmSource,
};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};
use tower_hashring::{
    HashRingLayer, HttpKey, LoadFactor, MissingKeyPolicy, NodeId, SharedHashRing,
};
use tower_ws_migrate::{
    MigrateLayer, MigrationEvent, MigrationHook, MigrationMetrics, MigrationPolicy,
    MigrationSecret, MigrationStats, Outcome, Pacing, ProxiedConnection,
};
use tower_ws_proxy::{
    server::{self, tls::TlsAcceptor, HttpLimits, Stopped},
    LiveConnections, ProxyFailover, ProxyMetrics, RelayConfig, Upstream, UpstreamConfig,
    WebSocketLayer,
};

use crate::{
    admin,
    admin_access::{AdminAccess, OwnListeners},
    dashboard::RecentMoves,
    metrics::GatewayMetrics,
    public,
};

/// Settings of a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The public listener (clients).
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// A listener that serves `GET /metrics` alone, without the admin token (for a scraper
    /// that should not hold it); `None`: metrics only on the admin listener.
    pub metrics: Option<SocketAddr>,
    /// The admin API's token and the networks backends may be added from. Without a token the
    /// admin listener must be on loopback.
    pub admin_access: AdminAccess,
    /// Where requests carry their key.
    pub key: HttpKey,
    /// What happens to requests without a key.
    pub missing_key: MissingKeyPolicy,
    /// Bounded loads: a key goes to the first backend clockwise whose live WebSockets are
    /// under this factor × the mean (weighted); `None` routes to the owner alone.
    pub load_factor: Option<LoadFactor>,
    /// Relay timeouts.
    pub relay: RelayConfig,
    /// Backend timeouts.
    pub upstream: UpstreamConfig,
    /// The most WebSockets proxied at once; past it, 503.
    pub max_connections: usize,
    /// On shutdown, WebSockets are closed with 1001 spread over this window.
    pub shutdown_window: Duration,
    /// The most an HTTP response head may take (408 past it).
    pub request_timeout: Duration,
    /// The whole request head must arrive within this, counted from when the connection
    /// waits for a request (after the accept, or after the previous response: it bounds the
    /// keep-alive idle wait too); past it the connection is closed (default: 10 s).
    pub head_timeout: Duration,
    /// The largest request head, at least 8 KiB; 431 past it (default: 16 KiB).
    pub max_head_bytes: usize,
    /// The most request headers; 431 past it (default: 64).
    pub max_headers: usize,
    /// Public connections served at once before an upgrade; past it new ones are closed at
    /// once, so a flood cannot take the descriptors WebSockets and health checks need.
    pub max_http_connections: usize,
    /// After the shutdown window, how long WebSockets and requests still open get before the
    /// gateway lets go of them (default: 5 s).
    pub shutdown_grace: Duration,
    /// Threads serving the public listener, each a single-threaded runtime with its own
    /// `SO_REUSEPORT` listener, so a WebSocket's relay never wakes another thread. 0 serves
    /// on the runtime that started the gateway.
    pub workers: usize,
    /// How WebSockets whose owner changed are moved.
    pub migration: MigrationConfig,
    /// Where members come from besides the configured list and the admin API.
    pub discovery: DiscoveryConfig,
    /// Where ring changes and migrations are published.
    pub events: Option<EventsConfig>,
    /// TLS on the public listener (`wss://`); `None`: plaintext.
    pub tls: Option<TlsAcceptor>,
}

/// A RabbitMQ fanout exchange that receives every ring change and migration as JSON.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// `amqp://user:password@host:port/vhost`.
    pub url: String,
    /// The exchange (declared durable, fanout).
    pub exchange: String,
}

/// Membership sources beyond the static list, and health checks.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// Backends registered in Redis.
    pub redis: Option<RedisSource>,
    /// Backends running as labelled Docker containers.
    pub docker: Option<DockerConfig>,
    /// Backends running as the tasks of labelled Docker Swarm services.
    pub swarm: Option<SwarmConfig>,
    /// Backends that announce themselves on a RabbitMQ fanout exchange: (URL, exchange).
    pub amqp: Option<(String, String)>,
    /// Active health checks for configured and discovered backends (not for the demo's
    /// in-process ones): a backend is on the ring only while they pass.
    pub health: Option<HealthCheck>,
    /// Holds out discovered members that keep leaving and coming back (`None`: off).
    pub damping: Option<FlapDamping>,
}

impl Default for DiscoveryConfig {
    /// No sources, no health checks, and flap damping on: a member that left 4 times within
    /// 60 s is held out for 30 s after its latest departure.
    fn default() -> Self {
        Self {
            redis: None,
            docker: None,
            swarm: None,
            amqp: None,
            health: None,
            damping: Some(FlapDamping::new(
                4,
                Duration::from_secs(60),
                Duration::from_secs(30),
            )),
        }
    }
}

/// Backends that run as Docker containers labelled `wscluster.service=<service>`.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The service label's value.
    pub service: String,
    /// The network the gateway reaches them on (default: their first).
    pub network: Option<String>,
    /// With an image, the admin API starts (`POST /admin/backends`) and stops containers.
    pub image: Option<String>,
    /// The most containers the admin API may run.
    pub cap: usize,
    /// Each container's memory, CPU and process limits.
    pub limits: ContainerLimits,
}

/// Backends that run as the tasks of Swarm services labelled `wscluster.service=<service>`
/// (one member per replica slot, `<service name>.<slot>`).
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// The service label's value.
    pub service: String,
    /// The overlay network the gateway reaches the tasks on (default: their first).
    pub network: Option<String>,
    /// The admin API scales the one Swarm service carrying the label (`POST
    /// /admin/backends`: one more replica, `DELETE /admin/backends`: one fewer).
    pub scale: bool,
    /// The most replicas the admin API may run.
    pub cap: u64,
}

/// Backends that register themselves in Redis (`wsbackend --redis`).
#[derive(Clone, Debug)]
pub struct RedisSource {
    /// `redis://host:port/db`.
    pub url: String,
    /// The service name their registrations are filed under.
    pub service: String,
    /// How often the whole set is re-read even without an announcement.
    pub resync: Duration,
}

/// How the gateway moves WebSockets whose owner changed on the ring.
#[derive(Clone, Debug)]
pub struct MigrationConfig {
    /// The policy of routes without one of their own (default: Live, falling back to a 1012
    /// close).
    pub policy: MigrationPolicy,
    /// Policies by path prefix; the first match wins.
    pub routes: Vec<(String, MigrationPolicy)>,
    /// How fast connections are moved (default: 1000 per second, 20 % jitter).
    pub pacing: Pacing,
    /// Connections of a removed backend move over this window (default: 5 s).
    pub drain_window: Duration,
    /// Signs live moves so backends can check `x-wscluster-migrated-from` (default: none).
    pub secret: Option<MigrationSecret>,
    /// A migration with no outcome after this long counts as failed and frees its slot
    /// (default: connect + handshake + switch + close timeouts).
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

impl GatewayConfig {
    /// The default routes: `/connect/{userId}`, then `?userId=`.
    pub fn default_key() -> HttpKey {
        HttpKey::new()
            .path("/connect/{userId}")
            .expect("a valid built-in pattern")
            .query("userId")
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            public: ([127, 0, 0, 1], 7000).into(),
            admin: ([127, 0, 0, 1], 7001).into(),
            metrics: None,
            admin_access: AdminAccess::default(),
            key: Self::default_key(),
            missing_key: MissingKeyPolicy::Reject,
            load_factor: None,
            relay: RelayConfig::default(),
            upstream: UpstreamConfig::default(),
            max_connections: 100_000,
            shutdown_window: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_http_connections: 10_000,
            shutdown_grace: Duration::from_secs(5),
            workers: 0,
            migration: MigrationConfig::default(),
            discovery: DiscoveryConfig::default(),
            events: None,
            tls: None,
        }
    }
}

/// A running gateway.
pub struct Gateway {
    /// Where clients connect.
    pub public: SocketAddr,
    /// Where the admin API listens.
    pub admin: SocketAddr,
    /// Where `/metrics` is served without a token, if anywhere.
    pub metrics: Option<SocketAddr>,
    connections: LiveConnections<ProxiedConnection>,
    stop: watch::Sender<bool>,
    exit: watch::Sender<bool>,
    servers: Vec<Stopped>,
    shutdown_window: Duration,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("public", &self.public)
            .field("admin", &self.admin)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts a gateway that routes over `backends` (`id`, `address`) and the configured
    /// discovery sources; with `[docker] image` configured, the admin API scales containers.
    pub async fn start(
        config: GatewayConfig,
        backends: Vec<(NodeId, SocketAddr)>,
    ) -> std::io::Result<Gateway> {
        let scaler = config
            .discovery
            .docker
            .as_ref()
            .and_then(docker_scaler)
            .or_else(|| config.discovery.swarm.as_ref().and_then(swarm_scaler));
        Self::launch(config, backends, scaler).await
    }

    /// Like [`start`](Self::start), with the admin API scaling backends through `scaler`
    /// (the demo's in-process backends, say).
    pub async fn start_scaled(
        config: GatewayConfig,
        backends: Vec<(NodeId, SocketAddr)>,
        scaler: Arc<dyn Scaler>,
    ) -> std::io::Result<Gateway> {
        Self::launch(config, backends, Some(scaler)).await
    }

    /// The wiring: member sources, the ring and its migrator, the public stack, the admin
    /// app, and serving them.
    async fn launch(
        config: GatewayConfig,
        backends: Vec<(NodeId, SocketAddr)>,
        scaler: Option<Arc<dyn Scaler>>,
    ) -> std::io::Result<Gateway> {
        if config.admin_access.token.is_none() && !config.admin.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the admin listener {} is not on loopback: give it a token \
                     (admin.token, admin.token_file or WSCLUSTER_ADMIN_TOKEN)",
                    config.admin
                ),
            ));
        }
        let (members, ring_changes) = Membership::new();
        let discovery_metrics = DiscoveryMetrics::default();
        follow_sources(
            &members,
            &config,
            backends,
            scaler.as_deref(),
            &discovery_metrics,
        )?;
        // One `LiveConnections`: the cap, the per-backend counts (bounded loads read them), the
        // migrator's records and shutdown all use it.
        let connections = LiveConnections::with_limit(config.max_connections);
        let (proxy_metrics, migration_metrics) =
            (ProxyMetrics::default(), MigrationMetrics::default());
        let routing = RingAndMigration::start(
            &config,
            &members,
            ring_changes,
            &connections,
            migration_metrics.clone(),
        );
        let metrics = GatewayMetrics::new(
            &proxy_metrics,
            &migration_metrics,
            &discovery_metrics,
            &routing.ring,
            &connections,
            &members,
        );
        let migration_metrics = migration_metrics.clone();
        let own_listeners = OwnListeners::default();
        let public_app = public::public_stack(
            config.request_timeout,
            routing.migrate,
            // The accept loops give every client socket these options (serve.rs).
            WebSocketLayer::new(
                connections.clone(),
                config.relay.client_keepalive_inherited(true),
            )
            .metrics(proxy_metrics),
            routing.ring.clone().failover(ProxyFailover),
        );
        let admin_app = admin::admin_router(admin::AdminState {
            ring: routing.ring,
            members,
            connections: connections.clone(),
            stats: routing.stats,
            drain_window: config.migration.drain_window,
            scaler,
            access: config.admin_access.clone(),
            own_listeners: own_listeners.clone(),
            metrics: metrics.clone(),
            migration_metrics,
            recent: routing.recent,
        });
        let apps = Apps {
            public: public_app,
            admin: admin_app,
            metrics: config.metrics.map(|_| admin::metrics_router(metrics)),
        };
        Self::serve(&config, apps, connections, own_listeners).await
    }

    /// Binds the listeners and serves the apps.
    async fn serve(
        config: &GatewayConfig,
        apps: Apps,
        connections: LiveConnections<ProxiedConnection>,
        own_listeners: OwnListeners,
    ) -> std::io::Result<Gateway> {
        let Apps {
            public: public_app,
            admin: admin_app,
            metrics: metrics_app,
        } = apps;
        let admin_listener = TcpListener::bind(config.admin).await?;
        let (stop, stopped) = watch::channel(false);
        let (exit, exited) = watch::channel(false);
        let mut limits = HttpLimits::default().open_connections(config.max_http_connections);
        limits.head_timeout = config.head_timeout;
        limits.max_head_bytes = config.max_head_bytes;
        limits.max_headers = config.max_headers;
        limits.stop_grace = config.shutdown_grace;
        limits.relay = config.relay;
        let (public, mut servers) = match (config.workers, config.tls.clone()) {
            (0, tls) => {
                let listener = TcpListener::bind(config.public).await?;
                let public = listener.local_addr()?;
                let (limits, stopped) = (limits.clone(), stopped.clone());
                let server = match tls {
                    None => server::serve(listener, public_app, limits, stopped),
                    Some(tls) => server::serve_tls(listener, public_app, limits, tls, stopped),
                };
                (public, vec![server])
            }
            (workers, None) => server::serve_on_workers(
                config.public,
                workers,
                public_app,
                limits.clone(),
                stopped.clone(),
                exited,
            )?,
            (workers, Some(tls)) => server::serve_tls_on_workers(
                config.public,
                workers,
                public_app,
                limits.clone(),
                tls,
                stopped.clone(),
                exited,
            )?,
        };
        let admin = admin_listener.local_addr()?;
        let mut own = vec![public, admin];
        let metrics = match (config.metrics, metrics_app) {
            (Some(address), Some(app)) => {
                let listener = TcpListener::bind(address).await?;
                let bound = listener.local_addr()?;
                own.push(bound);
                let server = server::serve(listener, app, limits.without_cap(), stopped.clone());
                servers.push(server);
                Some(bound)
            }
            _ => None,
        };
        own_listeners.set(own);
        servers.push(server::serve(
            admin_listener,
            admin_app,
            limits.without_cap(),
            stopped,
        ));
        tracing::info!(%public, %admin, workers = config.workers, "listening");
        Ok(Gateway {
            public,
            admin,
            metrics,
            connections,
            stop,
            exit,
            servers,
            shutdown_window: config.shutdown_window,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The live WebSocket connections.
    pub fn connections(&self) -> &LiveConnections<ProxiedConnection> {
        &self.connections
    }

    /// Stops accepting, closes WebSockets with 1001 over the shutdown window, and lets
    /// in-flight HTTP requests finish. Whatever the peers do, it returns within the window
    /// plus the grace: relays end by their own close deadlines, and connections still open
    /// after the grace are dropped.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let relays = self
            .connections
            .shutdown(self.shutdown_window, self.shutdown_grace);
        let servers = futures_util::future::join_all(self.servers);
        tokio::join!(relays, servers);
        // Relays are closed: worker threads may drop their runtimes.
        self.exit.send_replace(true);
    }

    /// The most [`shutdown`](Self::shutdown) takes.
    pub fn shutdown_bound(&self) -> Duration {
        self.shutdown_window + self.shutdown_grace
    }
}

/// What the gateway serves: the public stack, the admin API, and `/metrics` alone when it
/// has a listener of its own.
struct Apps {
    public: axum::Router,
    admin: axum::Router,
    metrics: Option<axum::Router>,
}

/// Follows every member source: the configured list, Redis, RabbitMQ and Docker (each
/// through the health checks when configured), and the scaler's own backends.
fn follow_sources(
    members: &Membership,
    config: &GatewayConfig,
    backends: Vec<(NodeId, SocketAddr)>,
    scaler: Option<&dyn Scaler>,
    metrics: &DiscoveryMetrics,
) -> std::io::Result<()> {
    let discovery = &config.discovery;
    let health = discovery.health.as_ref();
    if let Some(damping) = &discovery.damping {
        members.damp(damping.clone());
    }
    let listed = backends
        .into_iter()
        .map(|(id, address)| discovery::Backend::new(id.as_str(), address));
    members.follow_checked(Origin::Static, health, StaticDiscovery::new(listed));
    if let Some(redis) = &discovery.redis {
        let registry = RedisRegistry::new(&redis.url, redis.service.as_str())
            .map_err(std::io::Error::other)?
            .resync(redis.resync)
            .metrics(metrics.clone());
        members.follow_checked(Origin::Redis, health, registry.discover());
    }
    if let Some((url, exchange)) = &discovery.amqp {
        let source = amqp_members_counted(url, exchange, metrics.clone());
        members.follow_checked(Origin::Amqp, health, source);
    }
    if let Some(docker) = &discovery.docker {
        let source = DockerSource::new(docker.service.as_str()).metrics(metrics.clone());
        let source = match &docker.network {
            Some(network) => source.network(network.as_str()),
            None => source,
        };
        members.follow_checked(Origin::Docker, health, source.discover());
    }
    if let Some(swarm) = &discovery.swarm {
        let source = SwarmSource::new(swarm.service.as_str()).metrics(metrics.clone());
        let source = match &swarm.network {
            Some(network) => source.network(network.as_str()),
            None => source,
        };
        members.follow_checked(Origin::Swarm, health, source.discover());
    }
    // The scaler's backends run where it started them: no health check of ours.
    if let Some(own) = scaler.and_then(|scaler| scaler.members()) {
        members.follow(Origin::Scaler, own);
    }
    Ok(())
}

/// The Docker scaler of `[docker]`, when it names an image to start.
fn docker_scaler(docker: &DockerConfig) -> Option<Arc<dyn Scaler>> {
    let image = docker.image.as_ref()?;
    let scaler = DockerScaler::new(docker.service.as_str(), image.as_str())
        .cap(docker.cap)
        .limits(docker.limits);
    let scaler = match &docker.network {
        Some(network) => scaler.network(network.as_str()),
        None => scaler,
    };
    Some(Arc::new(scaler))
}

/// The Swarm scaler of `[swarm]`, when it names a service to scale.
fn swarm_scaler(swarm: &SwarmConfig) -> Option<Arc<dyn Scaler>> {
    swarm
        .scale
        .then(|| Arc::new(SwarmScaler::new(swarm.service.as_str()).cap(swarm.cap)) as _)
}

/// The ring over the members, its migrator (spawned) and the layer that makes connections
/// movable.
struct RingAndMigration {
    ring: SharedHashRing<Upstream, HttpKey>,
    migrate: MigrateLayer,
    stats: MigrationStats,
    recent: RecentMoves,
}

impl RingAndMigration {
    fn start(
        config: &GatewayConfig,
        members: &Membership,
        ring_changes: MembershipChanges,
        connections: &LiveConnections<ProxiedConnection>,
        metrics: MigrationMetrics,
    ) -> Self {
        let weights = members.clone();
        let mut balancer = HashRingLayer::new(config.key.clone())
            .missing_key(config.missing_key)
            .weights(move |id: &NodeId, _: &Upstream| weights.weight(id));
        if let Some(factor) = config.load_factor {
            balancer = balancer.bounded_loads(factor, Arc::new(connections.clone()));
        }
        let upstream = config.upstream;
        let upstreams = ring_changes
            .map_backends(move |backend| Upstream::new(backend.address.to_string(), upstream));
        let (ring, driver) = balancer.shared(upstreams);
        tokio::spawn(driver);
        crate::digest::log_ring_changes(ring.subscribe(), members.clone());
        let events = config.events.as_ref().map(|events| {
            let events = AmqpEvents::spawn(&events.url, &events.exchange);
            publish_ring_changes(events.clone(), ring.subscribe());
            events
        });
        let migration = &config.migration;
        let deadline = migration.deadline.unwrap_or(
            config.upstream.connect_timeout
                + config.upstream.handshake_timeout
                + config.relay.switch_timeout
                + config.relay.close_timeout,
        );
        // On a ring change the migrator moves exactly the connections whose owner changed
        // (live, or by a 1012 close), paced.
        let recent = RecentMoves::default();
        let (migrate, migrator) = MigrateLayer::from_ring(&ring, connections);
        let mut migrator = migrator
            .policy(migration.policy.clone())
            .pacing(migration.pacing)
            .drain_window(migration.drain_window)
            .deadline(deadline)
            .metrics(metrics)
            .hook(migration_hook(events, recent.clone()));
        if let Some(factor) = config.load_factor {
            // Moves land where the balancer would route: no backend past its capacity.
            migrator = migrator.bounded_loads(factor);
        }
        let stats = migrator.stats();
        tokio::spawn(migrator.run());
        let routes = migration.routes.clone();
        let mut migrate = migrate.route_policy(move |request: &http::request::Parts| {
            let path = request.uri.path();
            routes
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, policy)| policy.clone())
        });
        if let Some(secret) = &migration.secret {
            migrate = migrate.secret(secret.clone());
        }
        Self {
            ring,
            migrate,
            stats,
            recent,
        }
    }
}

/// Logs each migration that did not simply move, lists it for the dashboard, and publishes
/// it when events are configured.
fn migration_hook(events: Option<AmqpEvents>, recent: RecentMoves) -> impl MigrationHook {
    move |m: &MigrationEvent<'_>| {
        recent.record(m);
        let key = String::from_utf8_lossy(m.key);
        let outcome = match m.outcome {
            Outcome::Moved => {
                tracing::debug!(%key, from = %m.from, to = ?m.to, "moved");
                json!({ "result": "moved" })
            }
            Outcome::FellBack(why) => {
                tracing::warn!(%key, from = %m.from, to = ?m.to, %why, "live move fell back to reconnect");
                json!({ "result": "fell_back", "reason": why.kind.as_str(), "detail": why.detail })
            }
            Outcome::Failed(why) => {
                tracing::warn!(%key, from = %m.from, %why, "migration failed");
                json!({ "result": "failed", "detail": why })
            }
            _ => json!({ "result": "other" }),
        };
        if let Some(events) = &events {
            let policy = match m.policy {
                MigrationPolicy::Live { .. } => "live",
                _ => "reconnect",
            };
            events.publish(json!({
                "type": "migration",
                "ring_version": m.ring_version,
                "key": key,
                "from": m.from.as_str(),
                "to": m.to.map(NodeId::as_str),
                "policy": policy,
                "outcome": outcome,
            }));
        }
    }
}

/// Publishes every ring change, for as long as the ring is published.
fn publish_ring_changes(events: AmqpEvents, mut ring: tower_hashring::RingWatch) {
    tokio::spawn(async move {
        let mut last = ring.borrow_and_update().clone();
        while ring.changed().await.is_ok() {
            let newest = ring.borrow_and_update().clone();
            events.ring_changed(&last, &newest);
            last = newest;
        }
    });
}
