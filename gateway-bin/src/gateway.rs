//! The reference gateway: the hash-ring balancer, live migration and the WebSocket proxy
//! over axum, plus an admin API that shows the ring and, through a [`Scaler`], starts and
//! stops backends.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use discovery::{
    amqp_members_counted, AmqpEvents, DiscoveryMetrics, DockerScaler, DockerSource, Membership,
    MembershipChanges, Origin, RedisRegistry, Scaler, StaticDiscovery, SwarmScaler, SwarmSource,
};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};
use tower_hashring::{HashRingLayer, HttpKey, NodeId, SharedHashRing};
use tower_ws_migrate::{
    MigrateLayer, MigrationEvent, MigrationHook, MigrationMetrics, MigrationPolicy, MigrationStats,
    Outcome, ProxiedConnection,
};
use tower_ws_proxy::server::handover::{hand_over, Handed, Taken, TransferOptions, Upgrader};
use tower_ws_proxy::{
    client_limit::ClientLimitLayer,
    server::{
        self,
        tls::{Certificates, TlsAcceptor, TlsSettings},
        HttpLimits, Stopped,
    },
    LiveConnections, MakeHandle, ProxyFailover, ProxyMetrics, Resumer, Upstream, WebSocketLayer,
};

use crate::{
    admin,
    admin_access::OwnListeners,
    cluster::ClusterView,
    config::{DockerConfig, GatewayConfig, Listen, SwarmConfig},
    dashboard::RecentMoves,
    metrics::GatewayMetrics,
    public,
    upgrade::Listeners,
};

/// The WebSocket cap where neither the file nor the binary sets one.
const DEFAULT_MAX_WEBSOCKETS: usize = 100_000;
/// The public connections' cap where neither the file nor the binary sets one.
const DEFAULT_OPEN_CONNECTIONS: usize = 10_000;

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
    certificates: Option<Arc<Certificates>>,
    shutdown_window: Duration,
    shutdown_grace: Duration,
    upgrader: Upgrader,
    handover: Handover,
    upgrade_drain: Duration,
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
    /// Starts a gateway that routes over `backends` (`id`, `address`), the configured ones
    /// and the discovery sources; with `[discovery.docker] image` configured, the admin API
    /// scales containers.
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
        refuse_an_open_admin_api(&config)?;
        let discovery_metrics = DiscoveryMetrics::default();
        let (members, ring_changes) =
            follow_sources(&config, backends, scaler.as_deref(), &discovery_metrics)?;
        let connections = live_connections(&config);
        let (proxy_metrics, migration_metrics) =
            (ProxyMetrics::default(), MigrationMetrics::default());
        let routing = RingAndMigration::start(
            &config,
            &members,
            ring_changes,
            &connections,
            migration_metrics.clone(),
        );
        let client_limits = ClientLimitLayer::new(config.client_limits.clone());
        let tls = config.tls.as_ref().map(start_tls).transpose()?;
        let cluster = ClusterView::new(config.cluster.clone());
        let metrics = GatewayMetrics::new(
            &crate::metrics::EdgeMetrics {
                proxy: &proxy_metrics,
                client_refusals: &client_limits.refusals(),
                certificates: tls.as_ref().map(|tls| &**tls.certificates()),
            },
            &migration_metrics,
            &discovery_metrics,
            &routing.ring,
            &connections,
            &members,
            &cluster,
        );
        let migration_metrics = migration_metrics.clone();
        let own_listeners = OwnListeners::default();
        // The accept loops give every client socket these options (serve.rs).
        let relay = config.relay.client_keepalive_inherited(true);
        let websockets = WebSocketLayer::new(connections.clone(), relay).metrics(proxy_metrics);
        let handover = (websockets.resumer(), routing.migrate.make_handle());
        let public_app = public::public_stack(
            config.proxy.request_timeout,
            routing.migrate,
            client_limits,
            websockets.clone(),
            routing.ring.clone().failover(ProxyFailover),
        );
        let ring = routing.ring.clone();
        let admin_app = admin::admin_router(admin::AdminState {
            ring: routing.ring,
            members,
            connections: connections.clone(),
            stats: routing.stats,
            drain_window: config.migration.drain_window,
            scaler,
            access: config.admin.clone(),
            public_tls: config.tls.is_some(),
            own_listeners: own_listeners.clone(),
            metrics: metrics.clone(),
            migration_metrics,
            recent: routing.recent,
            history: Default::default(),
            cluster: cluster.clone(),
        });
        let apps = Apps {
            public: public_app,
            admin: admin_app,
            metrics: config
                .listen
                .metrics
                .map(|_| admin::metrics_router(metrics)),
            tls,
            ring,
            handover: (handover, cluster),
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
            tls,
            ring,
            handover: (handover, cluster),
        } = apps;
        let certificates = tls.as_ref().map(|tls| tls.certificates().clone());
        let admin_tls = tls.clone().filter(|_| config.admin.tls);
        let listen = &config.listen;
        let (listeners, upgrader) = Listeners::open(listen).await?;
        let offer = listeners.offer;
        let admin_listener = nonblocking(listeners.admin)?;
        let (stop, stopped) = watch::channel(false);
        let (exit, exited) = watch::channel(false);
        let mut limits = config.http.clone();
        if limits.open_connections.is_none() {
            limits = limits.open_connections(DEFAULT_OPEN_CONNECTIONS);
        }
        // An HTTP/2 connection carries its WebSockets as streams: it must outlive their 1001
        // closes, spread over the window (each relay ends by its own deadline within the grace).
        limits.stop_grace = config.shutdown.window + config.shutdown.grace;
        limits.relay = config.relay;
        let public = listeners.public;
        let (public, mut servers) =
            serve_public(listen, public, public_app, &limits, tls, (&stopped, exited))?;
        let admin = admin_listener.local_addr()?;
        let mut own = vec![public, admin];
        let metrics = match (listeners.metrics, metrics_app) {
            (Some(listener), Some(app)) => {
                let listener = nonblocking(listener)?;
                let bound = listener.local_addr()?;
                own.push(bound);
                let server = server::serve(
                    listener,
                    app,
                    limits.for_private_listener(),
                    stopped.clone(),
                );
                servers.push(server);
                Some(bound)
            }
            _ => None,
        };
        own_listeners.set(own);
        let admin_limits = limits.for_private_listener();
        servers.push(match admin_tls {
            Some(tls) => server::serve_tls(admin_listener, admin_app, admin_limits, tls, stopped),
            None => server::serve(admin_listener, admin_app, admin_limits, stopped),
        });
        tracing::info!(%public, %admin, workers = listen.workers, "listening");
        crate::upgrade::answer_offer(offer, &ring, handover.clone(), cluster).await;
        server::notify_systemd_ready();
        Ok(Gateway {
            upgrader,
            handover,
            upgrade_drain: config.shutdown.upgrade_drain,
            public,
            admin,
            metrics,
            connections,
            stop,
            exit,
            servers,
            certificates,
            shutdown_window: config.shutdown.window,
            shutdown_grace: config.shutdown.grace,
        })
    }

    /// The TLS certificates of the public listener, when it serves TLS: reload them on
    /// demand (on SIGHUP, say).
    pub fn certificates(&self) -> Option<&Arc<Certificates>> {
        self.certificates.as_ref()
    }

    /// Starts the next process with the listeners (on SIGUSR2, say).
    pub fn upgrader(&self) -> Upgrader {
        self.upgrader.clone()
    }

    /// The live WebSocket connections.
    pub fn connections(&self) -> &LiveConnections<ProxiedConnection> {
        &self.connections
    }

    /// Whether the listeners are still served here.
    pub fn accepting(&self) -> bool {
        !*self.stop.borrow()
    }

    /// Hands the plaintext WebSockets to the process that took the listeners (SIGUSR2),
    /// then stops accepting, unless the new process failed first: then this one keeps
    /// serving everything ([`Handed::failed`]). Those that stay (TLS, HTTP/2) are served
    /// until they end or `shutdown.upgrade_drain` passes.
    pub async fn hand_over(&self, mut taken: Taken) -> Handed {
        let (live, (resumer, make)) = (&self.connections, &self.handover);
        let stop = || _ = self.stop.send_replace(true);
        let options = TransferOptions::default();
        let handed = hand_over(&mut taken, live, (resumer, Some(make)), options, stop).await;
        if !self.accepting() {
            let _ = tokio::time::timeout(self.upgrade_drain, self.connections.emptied()).await;
        }
        handed
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
    /// TLS on the public listener.
    tls: Option<TlsAcceptor>,
    /// The ring the public app routes by.
    ring: SharedHashRing<Upstream, HttpKey>,
    /// What resumes WebSockets handed over by an upgrade, and where it says so.
    handover: (Handover, ClusterView),
}

/// Resumes handed-over WebSockets, with their handles made as the migration layer makes them.
type Handover = (Resumer<ProxiedConnection>, MakeHandle<ProxiedConnection>);

/// A gateway whose admin API anyone who can reach it could use is not started, nor one
/// asked to serve it over TLS without certificates.
fn refuse_an_open_admin_api(config: &GatewayConfig) -> std::io::Result<()> {
    if config.admin.tls && config.tls.is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "admin.tls is on but there is no certificate: add [tls] (or --tls-cert and --tls-key)",
        ));
    }
    if config.admin.tls && config.cluster.is_some() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "cluster: the replicas ask each other over plain HTTP, and admin.tls is on: \
             turn one of them off",
        ));
    }
    if config.admin.token.is_none() && !config.listen.admin.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the admin listener {} is not on loopback: give it a token \
                 (admin.token in the config file, or WSCLUSTER_ADMIN_TOKEN)",
                config.listen.admin
            ),
        ));
    }
    Ok(())
}

/// The public listener: on this runtime or on worker threads (one per listener), in
/// plaintext or TLS.
fn serve_public(
    listen: &Listen,
    listeners: Vec<std::net::TcpListener>,
    app: axum::Router,
    limits: &HttpLimits,
    tls: Option<TlsAcceptor>,
    (stopped, exited): (&watch::Receiver<bool>, watch::Receiver<bool>),
) -> std::io::Result<(SocketAddr, Vec<Stopped>)> {
    let (limits, stopped) = (limits.clone(), stopped.clone());
    let public = listeners[0].local_addr()?;
    let servers = match (listen.workers, listeners.len(), tls) {
        (0, 1, tls) => {
            let listener = nonblocking(listeners.into_iter().next().expect("one"))?;
            vec![match tls {
                None => server::serve(listener, app, limits, stopped),
                Some(tls) => server::serve_tls(listener, app, limits, tls, stopped),
            }]
        }
        (_, _, None) => server::serve_on_listeners(listeners, app, limits, stopped, exited)?,
        (_, _, Some(tls)) => {
            server::serve_tls_on_listeners(listeners, app, limits, tls, stopped, exited)?
        }
    };
    Ok((public, servers))
}

/// A bound listener for this runtime.
fn nonblocking(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// The `[tls]` certificates loaded (an error names the file), and watched: new handshakes
/// get the files' new contents within about two seconds of a change.
fn start_tls(settings: &TlsSettings) -> std::io::Result<TlsAcceptor> {
    let tls = TlsAcceptor::new(settings)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS: {e}")))?;
    // Ends with the certificates, once the gateway no longer serves them.
    drop(tls.certificates().watch(Duration::from_secs(1)));
    Ok(tls)
}

/// The members of every source: the configured list, Redis, RabbitMQ and Docker (each
/// through the health checks when configured), and the scaler's own backends.
fn follow_sources(
    config: &GatewayConfig,
    backends: Vec<(NodeId, SocketAddr)>,
    scaler: Option<&dyn Scaler>,
    metrics: &DiscoveryMetrics,
) -> std::io::Result<(Membership, MembershipChanges)> {
    let (membership, ring_changes) = Membership::new();
    let members = &membership;
    let discovery = &config.discovery;
    let health = discovery.health.as_ref();
    if let Some(damping) = &discovery.damping {
        members.damp(damping.clone());
    }
    let passed = backends
        .into_iter()
        .map(|(id, address)| discovery::Backend::new(id.as_str(), address));
    let listed = config.backends.iter().cloned().chain(passed);
    members.follow_checked(Origin::Static, health, StaticDiscovery::new(listed));
    if let Some(redis) = &discovery.redis {
        let registry = RedisRegistry::new(&redis.url, redis.service.as_str())
            .map_err(std::io::Error::other)?
            .resync(redis.resync)
            .metrics(metrics.clone());
        members.follow_checked(Origin::Redis, health, registry.discover());
    }
    if let Some(amqp) = &discovery.amqp {
        let source = amqp_members_counted(&amqp.url, &amqp.exchange, metrics.clone());
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
    Ok((membership, ring_changes))
}

/// The Docker scaler of `[discovery.docker]`, when it names an image to start.
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

/// The Swarm scaler of `[discovery.swarm]`, when it names a service to scale.
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
        let routing = &config.routing;
        let mut balancer = HashRingLayer::new(routing.key.clone())
            .missing_key(routing.missing_key)
            .weights(move |id: &NodeId, _: &Upstream| weights.weight(id));
        if let Some(factor) = routing.load_factor {
            balancer = balancer.bounded_loads(factor, Arc::new(connections.clone()));
        }
        let upstream = config.upstream.clone();
        let upstreams = ring_changes.map_backends(move |backend| {
            Upstream::new(backend.address.to_string(), upstream.clone())
        });
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
        if let Some(factor) = routing.load_factor {
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
                .find(|route| path.starts_with(route.prefix.as_str()))
                .map(|route| route.policy.clone())
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

/// The one `LiveConnections`: the cap, the per-backend counts (bounded loads read them), the
/// migrator's records and shutdown all use it.
fn live_connections(config: &GatewayConfig) -> LiveConnections<ProxiedConnection> {
    LiveConnections::with_limit(
        config
            .proxy
            .max_websockets
            .unwrap_or(DEFAULT_MAX_WEBSOCKETS),
    )
}
