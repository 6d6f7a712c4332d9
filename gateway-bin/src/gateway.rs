//! The reference gateway: the hash-ring balancer and the WebSocket proxy over axum, plus an
//! admin API that shows the ring and, in demo mode, starts and stops in-process backends.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::{HeaderName, HeaderValue, Request, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use futures_util::Stream;
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tower::{discover::Change, ServiceBuilder};
use tower_hashring::{HashRingLayer, HttpKey, LoadFactor, MissingKeyPolicy, NodeId};
use tower_http::{set_header::SetRequestHeaderLayer, timeout::TimeoutLayer, trace::TraceLayer};
use tower_ws_migrate::{
    FallbackKind, MigrateLayer, MigrationPolicy, MigrationStats, Migrator, Outcome, Pacing,
    ProxiedConnection, Registry,
};
use tower_ws_proxy::{HashRingProxy, LiveConnections, RelayConfig, Upstream, UpstreamConfig};

use crate::{
    backend::Backend,
    serve::{self, Stopped},
};

/// Settings of a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The public listener (clients).
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
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
    /// Threads serving the public listener, each a single-threaded runtime with its own
    /// `SO_REUSEPORT` listener, so a WebSocket's relay never wakes another thread. 0 serves
    /// on the runtime that started the gateway.
    pub workers: usize,
    /// How WebSockets whose owner changed are moved.
    pub migration: MigrationConfig,
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
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            policy: MigrationPolicy::live(),
            routes: Vec::new(),
            pacing: Pacing::default(),
            drain_window: Duration::from_secs(5),
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
            key: Self::default_key(),
            missing_key: MissingKeyPolicy::Reject,
            load_factor: None,
            relay: RelayConfig::default(),
            upstream: UpstreamConfig::default(),
            max_connections: 100_000,
            shutdown_window: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            workers: 0,
            migration: MigrationConfig::default(),
        }
    }
}

type Discovery = Pin<Box<dyn Stream<Item = Result<Change<NodeId, Upstream>, Infallible>> + Send>>;

/// A backend the gateway routes to, as the admin API shows it.
#[derive(Clone, Debug)]
struct Member {
    address: SocketAddr,
    /// Set for backends the demo started in this process: stops them.
    stop: Option<Arc<tokio::sync::Notify>>,
}

/// Membership changes from the admin API and static configuration.
#[derive(Clone)]
struct Members {
    changes: mpsc::UnboundedSender<Result<Change<NodeId, Upstream>, Infallible>>,
    members: Arc<Mutex<BTreeMap<NodeId, Member>>>,
    upstream: UpstreamConfig,
}

impl Members {
    fn insert(&self, id: NodeId, member: Member) {
        let upstream = Upstream::new(member.address.to_string(), self.upstream);
        self.lock().insert(id.clone(), member);
        let _ = self.changes.send(Ok(Change::Insert(id, upstream)));
    }

    fn remove(&self, id: &NodeId) -> Option<Member> {
        let member = self.lock().remove(id)?;
        let _ = self.changes.send(Ok(Change::Remove(id.clone())));
        Some(member)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running gateway.
pub struct Gateway {
    /// Where clients connect.
    pub public: SocketAddr,
    /// Where the admin API listens.
    pub admin: SocketAddr,
    connections: LiveConnections,
    stop: watch::Sender<bool>,
    exit: watch::Sender<bool>,
    servers: Vec<Stopped>,
    shutdown_window: Duration,
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
    /// Starts a gateway that routes over `backends` (`id`, `address`) and, with
    /// `demo_backends`, starts that many reference backends in this process first.
    pub async fn start(
        config: GatewayConfig,
        backends: Vec<(NodeId, SocketAddr)>,
        demo_backends: usize,
    ) -> std::io::Result<Gateway> {
        let (changes, receiver) = mpsc::unbounded_channel();
        let discovery: Discovery = Box::pin(ChannelDiscovery(receiver));
        let members = Members {
            changes,
            members: Arc::default(),
            upstream: config.upstream,
        };
        for (id, address) in backends {
            members.insert(
                id,
                Member {
                    address,
                    stop: None,
                },
            );
        }
        for n in 0..demo_backends {
            start_demo_backend(&members, format!("backend-{}", (b'a' + n as u8) as char)).await?;
        }

        // Every WebSocket is registered by key, with live counts per backend (bounded loads
        // read them); on a ring change the migrator moves exactly those whose owner changed
        // (live, or by a 1012 close), paced.
        let registry: Registry<ProxiedConnection> = Registry::new();
        let mut balancer = HashRingLayer::new(config.key.clone()).missing_key(config.missing_key);
        if let Some(factor) = config.load_factor {
            balancer = balancer.bounded_loads(factor, Arc::new(registry.clone()));
        }
        let (ring, driver) = balancer.shared(discovery);
        tokio::spawn(driver);
        let connections = LiveConnections::new(config.max_connections);
        let proxy = HashRingProxy::new(ring, connections.clone(), config.relay);
        let migration = &config.migration;
        let migrator = Migrator::new(registry.clone(), proxy.ring().subscribe())
            .policy(migration.policy.clone())
            .pacing(migration.pacing)
            .drain_window(migration.drain_window)
            .hook(|m: &tower_ws_migrate::Migration<'_>| {
                let key = String::from_utf8_lossy(m.key);
                match m.outcome {
                    Outcome::Moved => tracing::debug!(%key, from = %m.from, to = ?m.to, "moved"),
                    Outcome::FellBack(why) => {
                        tracing::warn!(%key, from = %m.from, to = ?m.to, %why, "live move fell back to reconnect")
                    }
                    Outcome::Failed(why) => tracing::warn!(%key, from = %m.from, %why, "migration failed"),
                    _ => {}
                }
            });
        let stats = migrator.stats();
        tokio::spawn(migrator.run());
        let routes = migration.routes.clone();
        let migrate = MigrateLayer::new(registry.clone(), config.key.clone(), proxy.ring().clone())
            .route_policy(move |request: &http::request::Parts| {
                let path = request.uri.path();
                routes
                    .iter()
                    .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                    .map(|(_, policy)| policy.clone())
            });

        let admin_listener = TcpListener::bind(config.admin).await?;
        let (stop, stopped) = watch::channel(false);
        let (exit, exited) = watch::channel(false);
        let public_app = with_public_layers(
            Router::new()
                .fallback_service(ServiceBuilder::new().layer(migrate).service(proxy.clone())),
            config.request_timeout,
        );
        let admin_app = admin_router(AdminState {
            proxy,
            members,
            registry: registry.clone(),
            stats,
            drain_window: migration.drain_window,
        });
        let (public, mut servers) = if config.workers == 0 {
            let listener = TcpListener::bind(config.public).await?;
            let public = listener.local_addr()?;
            let server = serve::on_current_runtime(listener, public_app, stopped.clone());
            (public, vec![server])
        } else {
            let workers = config.workers;
            serve::on_worker_threads(config.public, workers, public_app, stopped.clone(), exited)?
        };
        let admin = admin_listener.local_addr()?;
        servers.push(serve::on_current_runtime(
            admin_listener,
            admin_app,
            stopped,
        ));
        tracing::info!(%public, %admin, workers = config.workers, "listening");
        Ok(Gateway {
            public,
            admin,
            connections,
            stop,
            exit,
            servers,
            shutdown_window: config.shutdown_window,
        })
    }

    /// The live WebSocket connections.
    pub fn connections(&self) -> &LiveConnections {
        &self.connections
    }

    /// Stops accepting, closes WebSockets with 1001 over the shutdown window, and lets
    /// in-flight HTTP requests finish.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        self.connections
            .shutdown(
                self.shutdown_window,
                self.shutdown_window + Duration::from_secs(5),
            )
            .await;
        for server in self.servers {
            server.await;
        }
        // Relays are closed: worker threads may drop their runtimes.
        self.exit.send_replace(true);
    }
}

/// What every public request goes through before the proxy: a request id (kept if the
/// client sent one, forwarded to the backend), a tracing span, and a timeout (408) on the
/// response head; a WebSocket's head is its 101, so relays are not cut by it.
fn with_public_layers(app: Router, timeout: Duration) -> Router {
    let next_id = Arc::new(AtomicU64::new(0));
    app.layer(
        ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::if_not_present(
            HeaderName::from_static("x-request-id"),
            move |_: &Request<axum::body::Body>| {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                HeaderValue::from_str(&format!("{:x}-{id}", std::process::id())).ok()
            },
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<axum::body::Body>| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok());
            tracing::info_span!("request", method = %request.method(), uri = %request.uri(), id)
        }))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout)),
    )
}

async fn start_demo_backend(members: &Members, id: String) -> std::io::Result<NodeId> {
    let listener = Backend::listen(([127, 0, 0, 1], 0).into())?;
    let address = listener.local_addr()?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let backend = Backend::new(id.clone());
    tokio::spawn(backend.serve(listener, async move { stopped.notified().await }));
    let id = NodeId::from(id);
    members.insert(
        id.clone(),
        Member {
            address,
            stop: Some(stop),
        },
    );
    tracing::info!(backend = %id, %address, "started in-process backend");
    Ok(id)
}

struct ChannelDiscovery(mpsc::UnboundedReceiver<Result<Change<NodeId, Upstream>, Infallible>>);

impl Stream for ChannelDiscovery {
    type Item = Result<Change<NodeId, Upstream>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[derive(Clone)]
struct AdminState {
    proxy: HashRingProxy<HttpKey>,
    members: Members,
    registry: Registry<ProxiedConnection>,
    stats: MigrationStats,
    drain_window: Duration,
}

fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/ring", get(ring))
        .route("/admin/backends", post(add_backend))
        .route("/admin/backends/{id}", delete(remove_backend))
        .with_state(state)
}

async fn ring(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = state.proxy.ring().snapshot();
    let counts = state.registry.per_backend();
    let members = state.members.lock().clone();
    let nodes: Vec<_> = snapshot
        .ring()
        .nodes()
        .iter()
        .map(|node| {
            json!({
                "id": node.id().as_str(),
                "address": members.get(node.id()).map(|m| m.address.to_string()),
                "weight": node.weight(),
                "connections": counts.get(node.id()).copied().unwrap_or(0),
            })
        })
        .collect();
    Json(json!({
        "version": snapshot.version(),
        "points": snapshot.ring().len_points(),
        "members": nodes,
        "connections": state.registry.len(),
        "migrations": {
            "moved": state.stats.moved(),
            "fell_back": state.stats.fell_back(),
            "fell_back_by_reason": FallbackKind::ALL
                .iter()
                .map(|kind| (kind.as_str(), state.stats.fell_back_for(*kind)))
                .collect::<BTreeMap<_, _>>(),
            "failed": state.stats.failed(),
        },
    }))
}

/// An external backend to add through the admin API.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    id: String,
    address: SocketAddr,
}

/// `POST /admin/backends`: with a JSON body `{"id":…,"address":…}`, adds that running
/// backend; with none, starts one more reference backend in this process (the demo).
async fn add_backend(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let new: NewBackend = match serde_json::from_slice(&body) {
            Ok(new) => new,
            Err(error) => {
                let reason = format!(
                    "the body must be {{\"id\": …, \"address\": \"host:port\"}}: {error}\n"
                );
                return (StatusCode::BAD_REQUEST, reason).into_response();
            }
        };
        if state.members.lock().contains_key(new.id.as_str()) {
            let reason = format!("backend {} is already on the ring\n", new.id);
            return (StatusCode::CONFLICT, reason).into_response();
        }
        let member = Member {
            address: new.address,
            stop: None,
        };
        state.members.insert(NodeId::from(new.id.as_str()), member);
        return (StatusCode::CREATED, Json(json!({ "id": new.id }))).into_response();
    }
    let taken = state.members.lock().len();
    let id = (taken..)
        .map(|n| format!("backend-{n}"))
        .find(|id| !state.members.lock().contains_key(id.as_str()))
        .unwrap_or_default();
    match start_demo_backend(&state.members, id).await {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id.as_str() }))).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start a backend: {error}\n"),
        )
            .into_response(),
    }
}

async fn remove_backend(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = NodeId::from(id);
    match state.members.remove(&id) {
        Some(member) => {
            // The ring change makes the migrator move its clients to their new owners over
            // the drain window; stop the backend once they have gone (or 5 s after it).
            let drained = async {
                while state.registry.per_backend().contains_key(&id) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let limit = state.drain_window + Duration::from_secs(5);
            let _ = tokio::time::timeout(limit, drained).await;
            if let Some(stop) = member.stop {
                stop.notify_waiters();
            }
            Json(json!({ "removed": id.as_str() })).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("no backend {id} on the ring\n"),
        )
            .into_response(),
    }
}

/// A future that resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
