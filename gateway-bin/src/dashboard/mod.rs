//! The operator's dashboard: one page of HTML, CSS and JS embedded in the binary, served on
//! the admin listener at `/`, and what it reads: the live state as Server-Sent Events
//! (`GET /admin/events`) and the migrations it lists.
//!
//! The page and its two files are served without the token: they hold no data. Everything
//! they show comes from the admin API, which wants the token in a header; the page takes it
//! from the URL's fragment (which no request carries), never from a cookie.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::header,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::get,
    Router,
};
use futures_util::Stream;
use serde::Serialize;
use tower_hashring::Ring;
use tower_ws_migrate::{MigrationEvent, MigrationPolicy, Outcome};

use crate::admin::{overview, AdminState};

mod history;
pub(crate) use self::history::History;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Scripts and styles from this origin only; WebSockets to the public listener (another
/// port, so another origin), and one `https:` request there that opens the HTTP/2 connection
/// its WebSockets then ride; no framing, no form posts, no plugins.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      img-src 'self'; connect-src 'self' ws: wss: https:; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// How often the live state is sent when nothing changes.
const TICK: Duration = Duration::from_secs(1);

/// The most arcs sent for the ring's picture; a ring with more is drawn at this resolution
/// (the owner at each of this many even steps round the circle).
const MAX_ARCS: usize = 8192;

/// `GET /`, `/dashboard.js` and `/dashboard.css`.
pub(crate) fn page_router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /admin/events`: a `state` event (the `/admin/ring` overview, with the ring's arcs
/// whenever its version changed) every second and at once on every ring change; the first
/// also carries the last 10 minutes' samples (`history`) for the charts.
pub(crate) async fn events(
    State(state): State<AdminState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ring = state.ring.subscribe();
    let start = (state, ring, None::<u64>, true);
    let stream =
        futures_util::stream::unfold(start, |(state, mut ring, drawn, first)| async move {
            if !first {
                // A closed watch (the ring's driver ended) still ticks.
                let _ = tokio::time::timeout(TICK, ring.changed()).await;
            }
            let snapshot = state.ring.snapshot();
            let mut body = overview(&state);
            let version = snapshot.version();
            if drawn != Some(version) {
                body["arcs"] = serde_json::to_value(Arcs::of(snapshot.ring())).unwrap_or_default();
            }
            if first {
                // The charts' minutes before this page: the page adds every later state.
                body["history"] = state.history.samples().into();
            }
            let event = Event::default().event("state").data(body.to_string());
            Some((Ok(event), (state, ring, Some(version), false)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The ring as arcs of the circle, each from its start (a fraction of the circle) up to the
/// next one's, owned by `ids[owners[i]]`.
#[derive(Debug, Default, PartialEq, Serialize)]
pub(crate) struct Arcs {
    starts: Vec<f64>,
    owners: Vec<u32>,
    ids: Vec<String>,
}

impl Arcs {
    /// A key belongs to the first point at or after its position, so the arc up to a point
    /// is that point's owner's (and past the last point the ring wraps to the first).
    pub(crate) fn of(ring: &Ring) -> Self {
        let ids = ring
            .nodes()
            .iter()
            .map(|n| n.id().as_str().to_owned())
            .collect();
        let index = |id: &str| ring.node_index(id).map_or(0, |i| i as u32);
        let points: Vec<(u64, u32)> = ring
            .points()
            .map(|(position, node)| (position, index(node.id().as_str())))
            .collect();
        let mut arcs = Self {
            ids,
            ..Self::default()
        };
        let Some(&(_, first_owner)) = points.first() else {
            return arcs;
        };
        let fraction = |position: u64| position as f64 / 2f64.powi(64);
        let push = |arcs: &mut Self, start: f64, owner: u32| {
            if arcs.owners.last() != Some(&owner) {
                arcs.starts.push(start);
                arcs.owners.push(owner);
            }
        };
        push(&mut arcs, 0.0, first_owner);
        for pair in points.windows(2) {
            push(&mut arcs, fraction(pair[0].0), pair[1].1);
        }
        if let Some(&(last, _)) = points.last() {
            push(&mut arcs, fraction(last), first_owner);
        }
        if arcs.starts.len() <= MAX_ARCS {
            return arcs;
        }
        // Too many to draw: the owner at each of MAX_ARCS even steps.
        arcs.starts.clear();
        arcs.owners.clear();
        for step in 0..MAX_ARCS {
            let at = step as f64 / MAX_ARCS as f64;
            let position = (at * 2f64.powi(64)) as u64;
            let after = points.partition_point(|(p, _)| *p < position);
            let owner = points.get(after).map_or(first_owner, |(_, o)| *o);
            push(&mut arcs, at, owner);
        }
        arcs
    }
}

/// Each member's share of the ring's key space, by ring index.
pub(crate) fn shares(ring: &Ring) -> Vec<f64> {
    let mut shares = vec![0.0; ring.nodes().len()];
    let points: Vec<(u64, usize)> = ring
        .points()
        .map(|(p, node)| (p, ring.node_index(node.id().as_str()).unwrap_or(0)))
        .collect();
    let Some(&(first, first_owner)) = points.first() else {
        return shares;
    };
    let full = 2f64.powi(64);
    let mut previous = first;
    for &(position, owner) in &points[1..] {
        shares[owner] += (position - previous) as f64 / full;
        previous = position;
    }
    // From the last point round to the first.
    shares[first_owner] += (u64::MAX - previous) as f64 / full + (first as f64 + 1.0) / full;
    shares
}

/// The latest migrations, newest first, for the dashboard. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecentMoves(Arc<Mutex<VecDeque<Move>>>);

/// How many are kept.
const RECENT: usize = 50;

/// One migration as the dashboard lists it (the key shows to the operator only).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Move {
    unix_ms: u64,
    key: String,
    from: String,
    to: Option<String>,
    policy: &'static str,
    outcome: String,
}

impl RecentMoves {
    /// Records `migration`.
    pub(crate) fn record(&self, migration: &MigrationEvent<'_>) {
        let outcome = match migration.outcome {
            Outcome::Moved => "moved".to_owned(),
            // The detail too: an operator (or a test) reading why needs the error itself.
            Outcome::FellBack(why) => format!("fell back: {}: {why}", why.kind.as_str()),
            Outcome::Failed(why) => format!("failed: {why}"),
            _ => "other".to_owned(),
        };
        let entry = Move {
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            key: String::from_utf8_lossy(migration.key).into_owned(),
            from: migration.from.as_str().to_owned(),
            to: migration.to.map(|to| to.as_str().to_owned()),
            policy: match migration.policy {
                MigrationPolicy::Live { .. } => "live",
                _ => "reconnect",
            },
            outcome,
        };
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_front(entry);
        recent.truncate(RECENT);
    }

    /// The latest, newest first.
    pub(crate) fn latest(&self) -> Vec<Move> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arcs_cover_the_circle_with_each_members_share() {
        let ring = Ring::builder()
            .node("a", 1)
            .node("b", 1)
            .node("c", 2)
            .build()
            .unwrap();
        let arcs = Arcs::of(&ring);
        assert_eq!(arcs.starts[0], 0.0);
        assert!(arcs.starts.windows(2).all(|w| w[0] < w[1]), "in ring order");
        assert!(arcs.owners.windows(2).all(|w| w[0] != w[1]), "merged");
        // Sampled: every position's arc owner is the ring's owner.
        for i in 0..1000u64 {
            let position = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let fraction = position as f64 / 2f64.powi(64);
            let arc = arcs.starts.partition_point(|s| *s <= fraction) - 1;
            let owner = &arcs.ids[arcs.owners[arc] as usize];
            // Float rounding can misplace a position right at a boundary; none is here.
            assert_eq!(
                Some(owner.as_str()),
                ring.owner_of(position).map(|n| n.id().as_str())
            );
        }
        let shares = shares(&ring);
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let c = ring.node_index("c").unwrap();
        assert!(
            shares[c] > 0.35 && shares[c] < 0.65,
            "weight 2 of 4: {shares:?}"
        );
    }

    #[test]
    fn a_large_ring_is_drawn_at_a_bounded_resolution() {
        let ring = (0..200)
            .fold(Ring::builder(), |b, i| b.node(format!("n{i}"), 1))
            .build()
            .unwrap();
        let arcs = Arcs::of(&ring);
        assert!(arcs.starts.len() <= MAX_ARCS && arcs.starts.len() > 1000);
        assert_eq!(arcs.ids.len(), 200);
    }
}
