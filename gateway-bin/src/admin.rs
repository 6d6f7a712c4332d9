//! The admin API: the ring and its members, and adding or removing backends.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use serde_json::json;
use tower_hashring::{HttpKey, LoadSource, NodeId, SharedHashRing};
use tower_http::validate_request::ValidateRequestHeaderLayer;
use tower_ws_migrate::{FallbackKind, MigrationStats, ProxiedConnection};
use tower_ws_proxy::{LiveConnections, Upstream};

use crate::{
    admin_access::{refuse_backend_address, AdminGuard, OwnListeners},
    members::{Member, Members},
    metrics::GatewayMetrics,
    scale::{Ownership, ScaleError, Scaler},
};

/// What the admin handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) ring: SharedHashRing<Upstream, HttpKey>,
    pub(crate) members: Members,
    pub(crate) connections: LiveConnections<ProxiedConnection>,
    pub(crate) stats: MigrationStats,
    pub(crate) drain_window: Duration,
    /// Starts and stops backends (Docker containers, the demo's in-process backends).
    pub(crate) scaler: Option<Arc<dyn Scaler>>,
    /// Who may use the API and which backend addresses it may add.
    pub(crate) access: crate::admin_access::AdminAccess,
    /// The gateway's listeners, once bound: never a backend.
    pub(crate) own_listeners: OwnListeners,
    /// What `/metrics` serves.
    pub(crate) metrics: GatewayMetrics,
}

/// The admin API; every route behind the [`AdminGuard`] (token, same origin, JSON writes).
pub(crate) fn admin_router(state: AdminState) -> Router {
    let guard = AdminGuard::new(state.access.token.clone());
    Router::new()
        .route("/admin/ring", get(ring))
        .route("/metrics", get(metrics))
        .route("/admin/backends", post(add_backend))
        .route("/admin/backends/{id}", delete(remove_backend))
        .with_state(state)
        .layer(ValidateRequestHeaderLayer::custom(guard))
}

async fn ring(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = state.ring.snapshot();
    let counts = state.connections.per_backend();
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
        "connections": state.connections.len(),
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
        if state.members.lock().contains_key(new.id.as_str()) {
            let reason = format!("backend {} is already on the ring\n", new.id);
            return (StatusCode::CONFLICT, reason).into_response();
        }
        let member = Member::at(new.address, 1);
        state.members.insert(NodeId::from(new.id.as_str()), member);
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
    if state.members.leave(&id).is_none() {
        state.members.returned(&id);
        let reason = format!("no backend {id} on the ring\n");
        return (StatusCode::NOT_FOUND, reason).into_response();
    }
    // The ring change makes the migrator move its clients to their new owners over the
    // drain window; stop the backend once they have gone.
    let drained = async {
        while state.connections.load(&id) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let limit = state.drain_window + Duration::from_secs(5);
    let _ = tokio::time::timeout(limit, drained).await;
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

/// A scaler's failure as the admin API answers it.
fn scale_error(error: &ScaleError) -> Response {
    let status = match error {
        ScaleError::AtCap(_) => StatusCode::CONFLICT,
        ScaleError::NotOurs(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    (status, format!("{error}\n")).into_response()
}
