//! The admin API: the ring and its members, and adding or removing backends.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::json;
use tower_hashring::{HttpKey, NodeId, SharedHashRing};
use tower_http::validate_request::ValidateRequestHeaderLayer;
use tower_ws_migrate::{FallbackKind, MigrationMetrics, MigrationStats, ProxiedConnection};
use tower_ws_proxy::{BoxError, LiveConnections, ProxyBody, ProxyFailover, Upstream};

use crate::{
    admin_access::{refuse_backend_address, AdminGuard, OwnListeners},
    cluster::{ClusterView, ReplicaReport, REPLICA_PATH},
    dashboard::{self, RecentMoves},
    metrics::GatewayMetrics,
};
use discovery::{Backend, Member, Membership, Origin, Ownership, ScaleError, Scaler, MAX_WEIGHT};

/// What the admin handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) ring: SharedHashRing<Upstream, HttpKey>,
    pub(crate) members: Membership,
    pub(crate) connections: LiveConnections<ProxiedConnection>,
    pub(crate) stats: MigrationStats,
    pub(crate) drain_window: Duration,
    /// Starts and stops backends (Docker containers, the demo's in-process backends).
    pub(crate) scaler: Option<Arc<dyn Scaler>>,
    /// Who may use the API and which backend addresses it may add.
    pub(crate) access: crate::admin_access::AdminAccess,
    /// The gateway's listeners, once bound: never a backend.
    pub(crate) own_listeners: OwnListeners,
    /// The public listener serves TLS: the dashboard's clients use `wss://`.
    pub(crate) public_tls: bool,
    /// What `/metrics` serves.
    pub(crate) metrics: GatewayMetrics,
    /// Migrations in flight, for the overview.
    pub(crate) migration_metrics: MigrationMetrics,
    /// The latest migrations, for the dashboard.
    pub(crate) recent: RecentMoves,
    /// The last 10 minutes, for the dashboard's charts.
    pub(crate) history: dashboard::History,
    /// The other replicas of this gateway and whether they agree.
    pub(crate) cluster: ClusterView,
}

/// The admin API; every route behind the [`AdminGuard`] (token, same origin, JSON writes).
pub(crate) fn admin_router(state: AdminState) -> Router {
    dashboard::History::follow(state.clone());
    ClusterView::follow(state.clone());
    let guard = AdminGuard::new(state.access.token.clone());
    let api = Router::new()
        .route("/admin/ring", get(ring))
        .route("/admin/events", get(dashboard::events))
        .route(REPLICA_PATH, get(replica))
        .route("/admin/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .route("/admin/backends", post(add_backend).delete(scale_down))
        .route(
            "/admin/backends/{id}",
            delete(remove_backend).patch(reweigh_backend),
        )
        .route("/admin/send", post(send))
        .route(
            "/admin/route",
            post(route_keys).layer(axum::extract::DefaultBodyLimit::max(4 << 20)),
        )
        .with_state(state)
        .layer(ValidateRequestHeaderLayer::custom(guard));
    dashboard::page_router().merge(api)
}

/// The most keys one `POST /admin/route` may ask about.
const MAX_ROUTE_KEYS: usize = 100_000;

/// `POST /admin/route` with `{"keys": ["42", …]}` (at most 100,000): each key's owner on the
/// ring now, in order (`null` on an empty ring), with the ring's version and digest: where
/// the ring sends a user, and the means to check that gateways agree. It is the plain owner:
/// with bounded loads on, a new connection may go to a successor with room instead.
async fn route_keys(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Keys {
        keys: Vec<String>,
    }
    let keys = match serde_json::from_slice::<Keys>(&body) {
        Ok(Keys { keys }) if keys.len() <= MAX_ROUTE_KEYS => keys,
        Ok(Keys { keys }) => {
            let reason = format!("{} keys: at most {MAX_ROUTE_KEYS} at once\n", keys.len());
            return (StatusCode::PAYLOAD_TOO_LARGE, reason).into_response();
        }
        Err(error) => {
            let reason = format!("the body must be {{\"keys\": [\"…\", …]}}: {error}\n");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let snapshot = state.ring.snapshot();
    let ring = snapshot.ring();
    let owners: Vec<Option<&str>> = keys
        .iter()
        .map(|key| ring.route(key.as_bytes()).map(|node| node.id().as_str()))
        .collect();
    let members = state.members.members();
    Json(json!({
        "version": snapshot.version(),
        "digest": crate::digest::ring_digest(ring, &members),
        "owners": owners,
    }))
    .into_response()
}

async fn ring(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(overview(&state))
}

/// `GET /admin/replica`: what this gateway routes by, for the other replicas.
async fn replica(State(state): State<AdminState>) -> Json<ReplicaReport> {
    Json(ReplicaReport::of(&state))
}

/// `GET /admin/cluster`: every replica of this gateway, and whether they agree.
async fn cluster(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(state.cluster.json(ReplicaReport::of(&state)))
}

/// Everything the admin API knows, as `GET /admin/ring` answers it and the dashboard's
/// events carry it: the ring (members with their state, weight, share of the key space,
/// live connections and traffic), the members not on it, migrations and their latest moves.
pub(crate) fn overview(state: &AdminState) -> serde_json::Value {
    let snapshot = state.ring.snapshot();
    let ring = snapshot.ring();
    let counts = state.connections.per_backend();
    let traffic = state.connections.traffic_per_backend();
    let members = state.members.members();
    let states: BTreeMap<_, _> = state.members.states(ring).into_iter().collect();
    let shares = dashboard::shares(ring);
    let describe = |id: &NodeId| {
        let totals = traffic.get(id).copied().unwrap_or_default();
        json!({
            "id": id.as_str(),
            "connections": counts.get(id).copied().unwrap_or(0),
            "state": states.get(id).map_or("up", |state| state.as_str()),
            // Where its source says it runs (a Swarm task's node), if it says.
            "node": members.get(id).and_then(|m| m.backend.metadata.get("node")),
            "traffic": {
                "to_backend": { "messages": totals.to_backend.messages, "bytes": totals.to_backend.bytes },
                "to_client": { "messages": totals.to_client.messages, "bytes": totals.to_client.bytes },
            },
        })
    };
    let nodes: Vec<_> = ring
        .nodes()
        .iter()
        .zip(&shares)
        .map(|(node, share)| {
            let mut entry = describe(node.id());
            let address = members
                .get(node.id())
                .map(|m| m.backend.address.to_string());
            entry["address"] = json!(address);
            entry["weight"] = json!(node.weight());
            entry["share"] = json!(share);
            entry
        })
        .collect();
    let others: Vec<_> = state
        .members
        .off_ring(ring)
        .into_iter()
        .map(|off| {
            let mut entry = describe(&off.id);
            entry["address"] = json!(off.address.map(|a| a.to_string()));
            entry["weight"] = json!(off.weight);
            entry["share"] = json!(0.0);
            entry
        })
        .collect();
    json!({
        "version": snapshot.version(),
        "digest": crate::digest::ring_digest(ring, &members),
        "points": ring.len_points(),
        "at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        "public": state.own_listeners.public().map(|a| a.to_string()),
        "public_tls": state.public_tls,
        "scaler": state.scaler.is_some(),
        "members": nodes,
        "others": others,
        "connections": state.connections.len(),
        "off_owner": crate::metrics::off_owner(ring, &state.connections),
        "migrations": {
            "moved": state.stats.moved(),
            "fell_back": state.stats.fell_back(),
            "fell_back_by_reason": FallbackKind::ALL
                .iter()
                .map(|kind| (kind.as_str(), state.stats.fell_back_for(*kind)))
                .collect::<BTreeMap<_, _>>(),
            "failed": state.stats.failed(),
            "in_flight": state.migration_metrics.in_flight(),
        },
        "recent": state.recent.latest(),
        "cluster": state.cluster.json(ReplicaReport::of(state)),
    })
}

/// `GET /metrics` alone, without the token: for `listen.metrics`, a listener of its own.
pub(crate) fn metrics_router(metrics: GatewayMetrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(metrics): State<GatewayMetrics>| async move { openmetrics(&metrics) }),
        )
        .with_state(metrics)
}

/// `GET /metrics`: every metric, as OpenMetrics text.
async fn metrics(State(state): State<AdminState>) -> Response {
    openmetrics(&state.metrics)
}

fn openmetrics(metrics: &GatewayMetrics) -> Response {
    match metrics.encode() {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

/// An external backend to add through the admin API.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    id: String,
    address: SocketAddr,
}

/// `POST /admin/backends`: with a JSON body `{"id":…,"address":…}`, adds that running
/// backend (403 for an address of the gateway itself or outside the allowed networks); with
/// an empty body or `{}`, has the scaler start one more (409 without a scaler).
async fn add_backend(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    let empty = body.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
            .is_ok_and(|object| object.is_empty());
    if !empty {
        let new: NewBackend = match serde_json::from_slice(&body) {
            Ok(new) => new,
            Err(error) => {
                let reason = format!(
                    "the body must be {{\"id\": …, \"address\": \"host:port\"}}: {error}\n"
                );
                return (StatusCode::BAD_REQUEST, reason).into_response();
            }
        };
        let networks = &state.access.backend_networks;
        if let Some(why) = refuse_backend_address(new.address, &state.own_listeners, networks) {
            return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
        }
        let member = Member::new(Backend::new(new.id.as_str(), new.address), Origin::Api);
        if !state.members.insert_new(member.backend.node_id(), member) {
            let reason = format!("backend {} is already on the ring\n", new.id);
            return (StatusCode::CONFLICT, reason).into_response();
        }
        return (StatusCode::CREATED, Json(json!({ "id": new.id }))).into_response();
    }
    let Some(scaler) = &state.scaler else {
        let reason = "this gateway has no scaler to start a backend with: send \
                      {\"id\": …, \"address\": \"host:port\"} to add a running one\n";
        return (StatusCode::CONFLICT, reason).into_response();
    };
    // It joins the ring once its source reports it (and, where checked, it is healthy).
    match scaler.start_one().await {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id.as_str() }))).into_response(),
        Err(error) => scale_error(&error),
    }
}

/// `DELETE /admin/backends/{id}`: off the ring, its connections drained to their new owners
/// (drain window + 5 s at most), then stopped by the scaler where it runs it. A backend the
/// scaler's platform has but that is not the scaler's (a container without our label) is a
/// 403, and never touched.
async fn remove_backend(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = NodeId::from(id);
    let ownership = match &state.scaler {
        Some(scaler) => match scaler.ownership(&id).await {
            Ok(ownership) => ownership,
            Err(error) => return scale_error(&error),
        },
        None => Ownership::Unknown,
    };
    if let Ownership::NotOurs(why) = &ownership {
        let reason = format!("{why}: this gateway never touches it\n");
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    // A member every gateway learns of from a shared source is removed there, or the
    // gateways would diverge; one the scaler runs is stopped, which the source then reports.
    let origin = state.members.get(&id).map(|m| m.origin);
    if let Some(origin) = origin.filter(|o| o.is_shared()) {
        if !matches!(ownership, Ownership::Ours) {
            return shared_member(&id, origin, "remove");
        }
    }
    if state.members.leave(&id).is_none() {
        state.members.returned(&id);
        let reason = format!("no backend {id} on the ring\n");
        return (StatusCode::NOT_FOUND, reason).into_response();
    }
    // The ring change makes the migrator move its clients to their new owners over the
    // drain window; stop the backend once they have gone (`LiveConnections::drained` says when).
    let limit = state.drain_window + Duration::from_secs(5);
    let _ = tokio::time::timeout(limit, state.connections.drained(&id)).await;
    let stopped = match (&state.scaler, ownership) {
        (Some(scaler), Ownership::Ours) => scaler.stop(&id).await,
        _ => Ok(()),
    };
    state.members.returned(&id);
    match stopped {
        Ok(()) => Json(json!({ "removed": id.as_str() })).into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("drained, but {error}\n")).into_response(),
    }
}

/// `DELETE /admin/backends`: one backend fewer, of the platform's choosing (a Swarm service
/// scaled down; its stopped task drains first, on every gateway). 409 without a scaler that
/// can, at the floor of one, or on a concurrent change.
async fn scale_down(State(state): State<AdminState>) -> Response {
    let Some(scaler) = &state.scaler else {
        let reason = "this gateway has no scaler: DELETE /admin/backends/{id} removes a member\n";
        return (StatusCode::CONFLICT, reason).into_response();
    };
    match scaler.scale_down().await {
        Ok(remaining) => Json(json!({ "backends": remaining })).into_response(),
        Err(error) => scale_error(&error),
    }
}

/// `PATCH /admin/backends/{id}` with `{"weight": n}`: re-weighs a member (0 drains it: it
/// stays a member, owns no keys, and its users move to their new owners).
async fn reweigh_backend(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Reweigh {
        weight: u32,
    }
    let weight = match serde_json::from_slice::<Reweigh>(&body) {
        Ok(Reweigh { weight }) if weight <= MAX_WEIGHT => weight,
        Ok(Reweigh { weight }) => {
            let reason = format!("weight {weight} is above the cap of {MAX_WEIGHT}\n");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
        Err(error) => {
            let reason = format!("the body must be {{\"weight\": 0..={MAX_WEIGHT}}}: {error}\n");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let id = NodeId::from(id);
    let origin = state.members.get(&id).map(|m| m.origin);
    if let Some(origin) = origin.filter(|o| o.is_shared()) {
        return shared_member(&id, origin, "re-weigh");
    }
    if !state.members.reweigh(&id, weight) {
        let reason = format!("no backend {id} among the members\n");
        return (StatusCode::NOT_FOUND, reason).into_response();
    }
    Json(json!({ "id": id.as_str(), "weight": weight })).into_response()
}

/// The longest answer of a backend to a push that is passed on.
const MAX_SEND_ANSWER: usize = 64 * 1024;

/// `POST /admin/send` with `{"userId": …, "message": …}`: the dashboard's push, sent as
/// `POST /send?userId=…` through the balancer to the user's owner, as the public listener
/// would. Answers the backend's status and text.
async fn send(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Push {
        #[serde(rename = "userId")]
        user_id: String,
        message: String,
    }
    let push: Push = match serde_json::from_slice(&body) {
        Ok(push) => push,
        Err(error) => {
            let reason = format!("the body must be {{\"userId\": …, \"message\": …}}: {error}\n");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("userId", &push.user_id)
        .finish();
    let body: ProxyBody = http_body_util::Full::new(bytes::Bytes::from(push.message))
        .map_err(|never| match never {})
        .boxed_unsync();
    let request = match http::Request::post(format!("/send?{query}"))
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
    {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    match push_through(&state.ring, request).await {
        Ok(answer) => (answer.status(), answer_text(answer).await).into_response(),
        // The balancer's own verdicts, as the public listener answers them: 503 with no
        // backend on the ring, 502 when the owner failed.
        Err(error) => {
            let status = tower_hashring::error::http_status(&*error);
            (status, format!("no backend took the push: {error}\n")).into_response()
        }
    }
}

type Answer = http::Response<ProxyBody>;

/// `request` through the balancer. (The futures are boxed where they are made: the handler's
/// own future could not be proven `Send` for every lifetime of the body's error type.)
fn push_through(
    ring: &SharedHashRing<Upstream, HttpKey>,
    request: http::Request<ProxyBody>,
) -> BoxFuture<'static, Result<Answer, BoxError>> {
    Box::pin(tower::ServiceExt::oneshot(
        ring.clone().failover(ProxyFailover),
        request,
    ))
}

/// A backend's answer as text, at most [`MAX_SEND_ANSWER`] bytes of it.
fn answer_text(answer: Answer) -> BoxFuture<'static, String> {
    let collect: BoxFuture<'static, Result<http_body_util::Collected<bytes::Bytes>, BoxError>> =
        Box::pin(http_body_util::Limited::new(answer.into_body(), MAX_SEND_ANSWER).collect());
    Box::pin(async move {
        match collect.await {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            Err(error) => format!("(unreadable answer: {error})"),
        }
    })
}

/// 409: `id` comes from a source every gateway follows; changing it on one gateway would
/// make the gateways route differently.
fn shared_member(id: &NodeId, origin: Origin, what: &str) -> Response {
    if origin == Origin::Swarm && what == "remove" {
        let reason = format!(
            "backend {id} is a Swarm task, which every gateway follows: Swarm picks which \
             replica a scale-down stops, so DELETE /admin/backends scales the service down \
             (its stopped task drains first, on every gateway)\n"
        );
        return (StatusCode::CONFLICT, reason).into_response();
    }
    let reason = format!(
        "backend {id} comes from {}, which every gateway follows: {what} it there; doing it \
         on one gateway would make the gateways route differently\n",
        origin.as_str()
    );
    (StatusCode::CONFLICT, reason).into_response()
}

/// A scaler's failure as the admin API answers it.
fn scale_error(error: &ScaleError) -> Response {
    let status = match error {
        ScaleError::AtCap(_) | ScaleError::Conflict(_) => StatusCode::CONFLICT,
        ScaleError::NotOurs(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    (status, format!("{error}\n")).into_response()
}
