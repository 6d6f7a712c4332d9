//! The admin API: the ring and its members, and adding or removing backends.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use discovery::{DockerError, DockerScaler};
use serde_json::json;
use tower_hashring::SharedHashRing;
use tower_hashring::{HttpKey, LoadSource, NodeId};
use tower_ws_migrate::{FallbackKind, MigrationStats, ProxiedConnection, Registry};
use tower_ws_proxy::Upstream;

use crate::members::{Member, Members};

/// What the admin handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) ring: SharedHashRing<Upstream, HttpKey>,
    pub(crate) members: Members,
    pub(crate) registry: Registry<ProxiedConnection>,
    pub(crate) stats: MigrationStats,
    pub(crate) drain_window: Duration,
    /// Set when the gateway runs its backends on Docker.
    pub(crate) docker: Option<DockerScaler>,
}

pub(crate) fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/ring", get(ring))
        .route("/admin/backends", post(add_backend))
        .route("/admin/backends/{id}", delete(remove_backend))
        .with_state(state)
}

async fn ring(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = state.ring.snapshot();
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
        let member = Member::at(new.address, 1);
        state.members.insert(NodeId::from(new.id.as_str()), member);
        return (StatusCode::CREATED, Json(json!({ "id": new.id }))).into_response();
    }
    if let Some(scaler) = &state.docker {
        // On Docker: one more container; it joins once it runs (and is healthy).
        return match scaler.start_one().await {
            Ok(name) => (StatusCode::CREATED, Json(json!({ "id": name }))).into_response(),
            Err(error @ DockerError::AtCap(_)) => {
                (StatusCode::CONFLICT, format!("{error}\n")).into_response()
            }
            Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response(),
        };
    }
    let taken = state.members.lock().len();
    let id = (taken..)
        .map(|n| format!("backend-{n}"))
        .find(|id| !state.members.lock().contains_key(id.as_str()))
        .unwrap_or_default();
    match state.members.start_demo_backend(id).await {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id.as_str() }))).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start a backend: {error}\n"),
        )
            .into_response(),
    }
}

/// `DELETE /admin/backends/{id}`: off the ring, its connections drained to their new owners
/// (drain window + 5 s at most), then stopped: the demo's in-process backend, or, on Docker,
/// its container (only a container carrying our label: anything else is a 403).
async fn remove_backend(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let id = NodeId::from(id);
    let container = match &state.docker {
        Some(scaler) => match scaler.owns(id.as_str()).await {
            Ok(true) => true,
            Ok(false) => {
                let reason = format!("{}\n", DockerError::NotOurs(id.to_string()));
                return (StatusCode::FORBIDDEN, reason).into_response();
            }
            Err(DockerError::NotFound(_)) => false,
            Err(error) => return (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response(),
        },
        None => false,
    };
    let Some(member) = state.members.leave(&id) else {
        state.members.returned(&id);
        let reason = format!("no backend {id} on the ring\n");
        return (StatusCode::NOT_FOUND, reason).into_response();
    };
    // The ring change makes the migrator move its clients to their new owners over the
    // drain window; stop the backend once they have gone.
    let drained = async {
        while state.registry.load(&id) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let limit = state.drain_window + Duration::from_secs(5);
    let _ = tokio::time::timeout(limit, drained).await;
    if let Some(stop) = member.stop {
        stop.notify_waiters();
    }
    let stopped = match (&state.docker, container) {
        (Some(scaler), true) => scaler.stop(id.as_str()).await,
        _ => Ok(()),
    };
    state.members.returned(&id);
    match stopped {
        Ok(()) => Json(json!({ "removed": id.as_str() })).into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("drained, but {error}\n")).into_response(),
    }
}
