//! The gateway's listeners for an in-place upgrade (`kill -USR2 <pid>`, with
//! `tower_ws_proxy::server::handover`): named `public.N`, `admin` and `metrics`, bound here
//! or taken from the process before this one; and, in the new process, the old one's
//! WebSockets resumed.

use std::net::TcpListener;

use tower_hashring::{HttpKey, SharedHashRing};
use tower_ws_migrate::ProxiedConnection;
use tower_ws_proxy::{
    server::{
        bind_workers,
        handover::{receive, Inherited, NamedListeners, Upgrader},
    },
    MakeHandle, Resumer, Upstream,
};

use crate::{cluster::ClusterView, config::Listen};

/// The gateway's listening sockets: bound here, or taken from the process before this one.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// The public listener: one per worker thread, or one.
    pub(crate) public: Vec<TcpListener>,
    pub(crate) admin: TcpListener,
    pub(crate) metrics: Option<TcpListener>,
    /// The old process's offer, answered once this one serves.
    pub(crate) offer: Option<Inherited>,
}

impl Listeners {
    /// The old process's listeners when an upgrade started this one, otherwise bound as
    /// `listen` says; and the upgrader that lends them to the next.
    pub(crate) async fn open(listen: &Listen) -> std::io::Result<(Self, Upgrader)> {
        let mut named = NamedListeners::bind_or_take(|| {
            let public = match listen.workers {
                0 => vec![TcpListener::bind(listen.public)?],
                workers => bind_workers(listen.public, workers)?,
            };
            let mut named: Vec<_> = (public.into_iter().enumerate())
                .map(|(n, listener)| (format!("public.{n}"), listener))
                .collect();
            named.push(("admin".into(), TcpListener::bind(listen.admin)?));
            if let Some(metrics) = listen.metrics {
                named.push(("metrics".into(), TcpListener::bind(metrics)?));
            }
            Ok(named)
        })
        .await?;
        let upgrader = Upgrader::new(named.copies()?);
        let public = named.take_numbered("public");
        let (Some(admin), false) = (named.take("admin"), public.is_empty()) else {
            return Err(std::io::Error::other(
                "no public or admin listener was offered",
            ));
        };
        let metrics = named.take("metrics");
        let offer = named.take_offer();
        Ok((
            Self {
                public,
                admin,
                metrics,
                offer,
            },
            upgrader,
        ))
    }
}

/// Tells the old process, if this one took its listeners, that it serves: once the ring has
/// members to route to (or after 10 s without), so that no request finds an empty ring.
/// Then the old process's WebSockets are resumed here, in the background.
pub(crate) async fn answer_offer(
    offer: Option<Inherited>,
    ring: &SharedHashRing<Upstream, HttpKey>,
    (resumer, make): (Resumer<ProxiedConnection>, MakeHandle<ProxiedConnection>),
    cluster: ClusterView,
) {
    let Some(offer) = offer else {
        return;
    };
    let routable = async {
        while ring.snapshot().ring().nodes().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), routable).await;
    match offer.serving().await {
        Ok(arrivals) => drop(tokio::spawn(async move {
            let received = receive(arrivals, &resumer, Some(&make)).await;
            tracing::info!(?received, "took the old process's websockets");
            cluster.handed_over(received);
        })),
        Err(error) => tracing::warn!(%error, "the old process did not hear that this one serves"),
    }
}
